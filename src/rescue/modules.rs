//! Kernel modules the hardware asks for: what `udevadm trigger` + `modprobe`
//! would do at boot, for reimage running as PID 1 without udev.
//!
//! Every device in sysfs publishes a `modalias`; depmod's `modules.alias`
//! maps fnmatch(3) patterns over those strings to module names, and
//! `modules.dep` says which files to load first. The decisions (what, in which
//! order, which syscall path on which errno) are pure functions; the
//! syscalls at the bottom are a thin layer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use nix::errno::Errno;

/// Wanted regardless of modalias: the filesystems imaging reads and writes,
/// and storage/network drivers whose devices may only appear later (a USB
/// stick enumerates after its host controller's driver is bound). Everything
/// else comes from the devices' modaliases. Names missing from the index are
/// fine: built in, or not shipped in this initramfs.
pub const ALWAYS: &[&str] = &[
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "exfat",
    "usb_storage",
    "uas",
    "sd_mod",
    "nvme",
    "ahci",
    "virtio_blk",
    "virtio_net",
    "virtio_pci",
    "af_packet",
];

/// sysfs device trees are a dozen or two levels deep; the bounds only stop a
/// runaway walk (a bind mount loop, a hostile fake tree).
const MAX_DEPTH: usize = 32;
const MAX_ENTRIES: usize = 500_000;
/// A sysfs attribute is at most one page.
const MAX_ATTR: u64 = 4096;
/// Larger than any module Debian ships decompressed (amdgpu is ~20 MiB).
const MAX_MODULE: u64 = 64 << 20;
/// Loading a bus driver adds devices with new modaliases (udev would see
/// their uevents); rescan this many times at most.
const MAX_PASSES: usize = 4;
/// finit_module(2) flag (include/uapi/linux/module.h, Linux 5.17): the file
/// is compressed, let the kernel decompress it (CONFIG_MODULE_DECOMPRESS).
const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

/// The alias, dependency and built-in tables of one `/lib/modules/<release>`.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// (normalised pattern, module name), in file order.
    aliases: Vec<(String, String)>,
    deps: HashMap<String, Module>,
    builtin: HashSet<String>,
}

#[derive(Debug)]
struct Module {
    /// As written in modules.dep: relative to `dir`.
    path: PathBuf,
    /// Dependency names, sorted and deduplicated.
    deps: Vec<String>,
}

impl ModuleIndex {
    /// Reads modules.alias, modules.dep and modules.builtin of `dir` (e.g. /lib/modules/$(uname -r)).
    pub fn load(dir: &Path) -> anyhow::Result<ModuleIndex> {
        let read = |name: &str, optional: bool| -> anyhow::Result<String> {
            let path = dir.join(name);
            match fs::read(&path) {
                Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                // modules.builtin comes from the kernel build, not depmod;
                // a hand-made tree may lack it.
                Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            }
        };
        Ok(Self::parse(
            dir,
            &read("modules.alias", false)?,
            &read("modules.dep", false)?,
            &read("modules.builtin", true)?,
        ))
    }

    /// Parses already-read file contents (for tests).
    pub fn parse(dir: &Path, alias: &str, dep: &str, builtin: &str) -> ModuleIndex {
        let content = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        // depmod writes `alias PATTERN MODULE_NAME`, one per line.
        let aliases = content(alias)
            .iter()
            .filter_map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    ["alias", pattern, module] => {
                        Some((normalize_alias(pattern), normalize_name(module)))
                    }
                    _ => None,
                },
            )
            .collect();
        // `path: dep-path dep-path ...`; depmod lists the transitive closure,
        // but each dependency has its own line, so direct edges are enough.
        let mut deps = HashMap::new();
        for line in content(dep) {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let Some((name, _)) = split_module(Path::new(path.trim())) else {
                continue;
            };
            let mut names: Vec<String> = rest
                .split_whitespace()
                .filter_map(|d| split_module(Path::new(d)).map(|(n, _)| n))
                .collect();
            names.sort();
            names.dedup();
            deps.entry(name).or_insert(Module {
                path: PathBuf::from(path.trim()),
                deps: names,
            });
        }
        let builtin = content(builtin)
            .iter()
            .filter_map(|l| split_module(Path::new(l)).map(|(n, _)| n))
            .collect();
        ModuleIndex {
            dir: dir.to_path_buf(),
            aliases,
            deps,
            builtin,
        }
    }

    /// Module names whose alias patterns match `modalias`, sorted, deduplicated.
    pub fn matching(&self, modalias: &str) -> Vec<String> {
        let modalias = normalize_alias(modalias);
        let found: BTreeSet<&String> = self
            .aliases
            .iter()
            .filter(|(pattern, _)| glob(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, module)| module)
            .collect();
        found.into_iter().cloned().collect()
    }

    /// Files to load for `wanted` names, dependencies first; plus names not found.
    ///
    /// A depth-first post-order over sorted names: each module comes after
    /// everything it depends on, once. An edge back to a module still being
    /// visited is a cycle (depmod warns but writes it); it is dropped, so the
    /// walk ends, and the kernel reports whatever symbol is then unresolved.
    pub fn load_order(&self, wanted: &[String]) -> (Vec<PathBuf>, Vec<String>) {
        let mut roots: Vec<String> = wanted.iter().map(|w| normalize_name(w)).collect();
        roots.sort();
        roots.dedup();
        let mut visited: HashSet<&str> = HashSet::new();
        let mut order = Vec::new();
        let mut missing = BTreeSet::new();
        for root in &roots {
            // An explicit stack of (module, next dependency index): a hostile
            // modules.dep chain cannot overflow the real one.
            let mut stack: Vec<(&Module, usize)> = Vec::new();
            let mut enter = |name: &str, stack: &mut Vec<_>| {
                if self.builtin.contains(name) || visited.contains(name) {
                    return;
                }
                match self.deps.get_key_value(name) {
                    Some((key, module)) => {
                        visited.insert(key.as_str());
                        stack.push((module, 0));
                    }
                    None => {
                        missing.insert(name.to_string());
                    }
                }
            };
            enter(root, &mut stack);
            while let Some(top) = stack.last_mut() {
                let module = top.0;
                match module.deps.get(top.1) {
                    Some(dep) => {
                        top.1 += 1;
                        enter(dep, &mut stack);
                    }
                    None => {
                        order.push(self.dir.join(&module.path));
                        stack.pop();
                    }
                }
            }
        }
        (order, missing.into_iter().collect())
    }

    /// The boot-time loop behind [`load_for_hardware`], with the loader
    /// passed in so tests need no CAP_SYS_MODULE.
    fn load_all_with(
        &self,
        sys: &Path,
        mut load: impl FnMut(&Path) -> Result<Outcome, String>,
    ) -> LoadReport {
        let mut report = LoadReport::default();
        let mut wanted: BTreeSet<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
        let mut seen_aliases = HashSet::new();
        let mut attempted = HashSet::new();
        let mut missing = BTreeSet::new();
        for _ in 0..MAX_PASSES {
            for alias in modaliases(sys) {
                if !seen_aliases.contains(&alias) {
                    wanted.extend(self.matching(&alias));
                    seen_aliases.insert(alias);
                }
            }
            let (files, gone) = self.load_order(&wanted.iter().cloned().collect::<Vec<_>>());
            missing.extend(gone);
            let fresh: Vec<PathBuf> = files
                .into_iter()
                .filter(|f| attempted.insert(f.clone()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for file in fresh {
                let name =
                    split_module(&file).map_or_else(|| file.display().to_string(), |(n, _)| n);
                match load(&file) {
                    Ok(Outcome::Loaded) => report.loaded.push(name),
                    Ok(Outcome::Already) => report.already.push(name),
                    Ok(Outcome::Missing) => drop(missing.insert(name)),
                    Err(e) => report.failed.push((name, e)),
                }
            }
        }
        // ALWAYS is a wish list; its absentees are expected, not news.
        report.missing = missing
            .into_iter()
            .filter(|m| !ALWAYS.contains(&m.as_str()))
            .collect();
        report
    }
}

/// Every modalias under <sys>/devices.
///
/// Symlinks are not followed (sysfs links `subsystem`, `driver`, `device`
/// back up the tree); unreadable attributes are skipped. Sorted, deduplicated
/// (every CPU has the same one).
pub fn modaliases(sys: &Path) -> Vec<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![(sys.join("devices"), 0)];
    let mut entries = 0;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(list) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in list.flatten() {
            entries += 1;
            if entries > MAX_ENTRIES {
                return found.into_iter().collect();
            }
            // DirEntry::file_type is d_type or lstat: never through a link.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            } else if kind.is_file() && entry.file_name() == "modalias" {
                found.extend(read_modalias(&entry.path()));
            }
        }
    }
    found.into_iter().collect()
}

fn read_modalias(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_ATTR)
        .read_to_end(&mut bytes)
        .ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// What a boot-time load did, for the console.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub already: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub missing: Vec<String>,
}

/// Loads what the hardware (and ALWAYS) asks for, dependencies first; returns what happened. `sys` = /sys, `dir` = /lib/modules/<release>.
pub fn load_for_hardware(sys: &Path, dir: &Path) -> anyhow::Result<LoadReport> {
    Ok(ModuleIndex::load(dir)?.load_all_with(sys, load_module))
}

/// /lib/modules/<uname -r>.
pub fn modules_dir() -> anyhow::Result<PathBuf> {
    let mut uts = MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: uname(2) only writes into the struct it is given; an all-zero
    // utsname (arrays of c_char) is a valid value, so assume_init is sound
    // whether or not the call succeeded.
    let (rc, uts) = unsafe { (libc::uname(uts.as_mut_ptr()), uts.assume_init()) };
    Errno::result(rc).context("uname")?;
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let release = String::from_utf8(release).context("kernel release is not UTF-8")?;
    ensure!(
        !release.is_empty() && !release.contains('/'),
        "unusable kernel release {release:?}"
    );
    Ok(Path::new("/lib/modules").join(release))
}

/// kmod's modname_normalize: module names treat `-` and `_` alike (the
/// kernel's KBUILD_MODNAME does), so `usb-storage.ko` is module `usb_storage`.
fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// kmod's alias_normalize, applied by modprobe to the alias it looks up and by
/// depmod to the patterns it indexes: `-` becomes `_`, except inside a
/// `[...]` class where it may be a range.
fn normalize_alias(alias: &str) -> String {
    let b = alias.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut p = 0;
    while let Some(&c) = b.get(p) {
        match (c, class(b, p)) {
            (b'[', Some((_, _, end))) => {
                out.extend_from_slice(&b[p..end]);
                p = end;
                continue;
            }
            (b'-', _) => out.push(b'_'),
            _ => out.push(c),
        }
        p += 1;
    }
    // Only ASCII bytes were replaced, so this is never lossy.
    String::from_utf8_lossy(&out).into_owned()
}

/// fnmatch(3) with flags 0, as kmod matches modules.alias patterns: `*`
/// (any run, `/` included), `?`, `[...]` with ranges and `!`/`^` negation,
/// `\` escapes; an unclosed `[` is literal. POSIX `[:alpha:]` classes are not
/// supported (depmod never writes them). Bytes, not characters: modaliases
/// are ASCII.
///
/// Every token but `*` consumes exactly one byte, so only the latest `*`
/// needs retrying: on a mismatch it absorbs one more byte. That bounds the
/// work to O(pattern × text) however many stars a hostile pattern has.
fn glob(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // (pattern index after the latest star, text index it resumes at)
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pat.get(p) == Some(&b'*') {
            p += 1;
            star = Some((p, t));
            continue;
        }
        let Some(&c) = text.get(t) else {
            return p == pat.len();
        };
        if let Some(next) = step(pat, p, c) {
            (p, t) = (next, t + 1);
        } else if let Some((sp, st)) = star {
            star = Some((sp, st + 1));
            (p, t) = (sp, st + 1);
        } else {
            return false;
        }
    }
}

/// If the single-byte token at `pat[p]` matches `c`, the index after it.
fn step(pat: &[u8], p: usize, c: u8) -> Option<usize> {
    let (matched, next) = match *pat.get(p)? {
        b'?' => (true, p + 1),
        b'[' => match class(pat, p) {
            Some((negated, body, end)) => (in_class(body, c) != negated, end),
            None => (c == b'[', p + 1),
        },
        _ => {
            let (lit, next) = escaped(pat, p);
            (lit == c, next)
        }
    };
    matched.then_some(next)
}

/// The class opening at `pat[open] == '['`: (negated, body, index after `]`),
/// or None when unclosed. A `]` first in the body is literal, as in fnmatch.
fn class(pat: &[u8], open: usize) -> Option<(bool, &[u8], usize)> {
    let mut q = open + 1;
    let negated = matches!(pat.get(q), Some(b'!' | b'^'));
    q += usize::from(negated);
    let start = q;
    if pat.get(q) == Some(&b']') {
        q += 1;
    }
    while let Some(&c) = pat.get(q) {
        match c {
            b']' => return Some((negated, &pat[start..q], q + 1)),
            b'\\' => q += 2,
            _ => q += 1,
        }
    }
    None
}

fn in_class(body: &[u8], c: u8) -> bool {
    let mut k = 0;
    while k < body.len() {
        let (lo, after) = escaped(body, k);
        // `-` between two members is a range; first or last it is literal.
        let (hi, next) = match body.get(after) {
            Some(b'-') if after + 1 < body.len() => escaped(body, after + 1),
            _ => (lo, after),
        };
        if (lo..=hi).contains(&c) {
            return true;
        }
        k = next;
    }
    false
}

/// The literal at `s[i]` (a `\` takes the next byte as is) and the index after it.
fn escaped(s: &[u8], i: usize) -> (u8, usize) {
    match (s.get(i), s.get(i + 1)) {
        (Some(b'\\'), Some(&next)) => (next, i + 2),
        (Some(&c), _) => (c, i + 1),
        (None, _) => (0, i + 1),
    }
}

/// How a module file is compressed, from the suffixes depmod keeps in modules.dep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

const SUFFIXES: [(&str, Compression); 4] = [
    (".ko", Compression::None),
    (".ko.xz", Compression::Xz),
    (".ko.zst", Compression::Zstd),
    (".ko.gz", Compression::Gzip),
];

/// A module file's (normalised name, compression), or None if it is not one.
fn split_module(path: &Path) -> Option<(String, Compression)> {
    let file = path.file_name()?.to_str()?;
    SUFFIXES.iter().find_map(|&(suffix, kind)| {
        let stem = file.strip_suffix(suffix).filter(|s| !s.is_empty())?;
        Some((normalize_name(stem), kind))
    })
}

/// What loading one module file came to, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Loaded,
    /// EEXIST: already loaded (by an earlier pass, or a racing loader).
    Already,
    /// Listed in modules.dep but the file is absent (a pruned initramfs).
    Missing,
}

/// The kernel's answer to finit_module(2)/init_module(2), EEXIST being success.
fn outcome(result: Result<(), Errno>) -> Result<Outcome, Errno> {
    match result {
        Ok(()) => Ok(Outcome::Loaded),
        Err(Errno::EEXIST) => Ok(Outcome::Already),
        Err(e) => Err(e),
    }
}

/// Whether finit_module's failure on a compressed file means "decompress it
/// yourself": EINVAL from kernels before 5.17, which reject the unknown
/// MODULE_INIT_COMPRESSED_FILE flag (or whose decompressor wants another
/// format); EOPNOTSUPP without CONFIG_MODULE_DECOMPRESS; ENOEXEC when the
/// compressed bytes were taken for an ELF image. Anything else is the
/// module's own failure and would recur.
fn decompress_in_user_space(kind: Compression, err: Errno) -> bool {
    kind != Compression::None && matches!(err, Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOEXEC)
}

/// Reads `input` through the `kind` decoder, refusing more than `limit` bytes
/// (a hostile or corrupt file must not fill the RAM-only system).
fn decompress(kind: Compression, input: impl Read, limit: u64) -> anyhow::Result<Vec<u8>> {
    let reader: Box<dyn Read + '_> = match kind {
        Compression::None => Box::new(input),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(input)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(input).context("starting zstd decoder")?)
        }
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
    };
    let mut image = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut image)
        .with_context(|| format!("decompressing {kind:?} module"))?;
    ensure!(
        image.len() as u64 <= limit,
        "decompressed module exceeds {} MiB",
        limit >> 20
    );
    Ok(image)
}

/// Loads one module file: finit_module(2) first (the kernel reads, and if it
/// can, decompresses the file itself), init_module(2) on a user-space
/// decompressed image when the kernel cannot.
fn load_module(path: &Path) -> Result<Outcome, String> {
    let kind = split_module(path).map_or(Compression::None, |(_, kind)| kind);
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::Missing),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let flags = if kind == Compression::None {
        0
    } else {
        MODULE_INIT_COMPRESSED_FILE
    };
    match outcome(finit_module(&file, flags)) {
        Err(e) if decompress_in_user_space(kind, e) => {
            let image = decompress(kind, &file, MAX_MODULE).map_err(|e| format!("{e:#}"))?;
            outcome(init_module(&image)).map_err(|e| format!("init_module: {e}"))
        }
        result => result.map_err(|e| format!("finit_module: {e}")),
    }
}

fn finit_module(file: &File, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: the fd stays open for the call (borrowed `file`); the params
    // argument is a NUL-terminated static string the kernel only reads.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            libc::c_long::from(file.as_raw_fd()),
            c"".as_ptr(),
            libc::c_long::from(flags),
        )
    };
    Errno::result(rc).map(drop)
}

fn init_module(image: &[u8]) -> Result<(), Errno> {
    // SAFETY: pointer and length describe a live slice the kernel copies
    // before returning; params is a NUL-terminated static string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            c"".as_ptr(),
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias fs-ext4 ext4
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000004v* virtio_rng
alias usb:v0781p5581d01[0-9][0-9]dc*dsc*dp*ic*isc*ip*in* usb_storage
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip62in* uas
alias acpi*:PNP0A03:* ghost-driver
not an alias line
";
    const DEP: &str = "\
kernel/drivers/net/ethernet/intel/e1000/e1000.ko.xz:
kernel/drivers/ata/ahci.ko.xz: kernel/drivers/ata/libahci.ko.xz kernel/drivers/ata/libata.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/ata/libahci.ko.xz: kernel/drivers/ata/libata.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/ata/libata.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/scsi/scsi_mod.ko.xz: kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/scsi/scsi_common.ko.xz:
kernel/drivers/scsi/sd_mod.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz
kernel/drivers/nvme/host/nvme-core.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/drivers/usb/storage/usb-storage.ko.xz: kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/usb/common/usb-common.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/usb/storage/uas.ko.xz: kernel/drivers/usb/storage/usb-storage.ko.xz kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz
kernel/drivers/usb/core/usbcore.ko.xz: kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/common/usb-common.ko.xz:
kernel/fs/ext4/ext4.ko.zst: kernel/lib/crc16.ko.zst kernel/fs/mbcache.ko.zst kernel/fs/jbd2/jbd2.ko.zst
kernel/fs/mbcache.ko.zst:
kernel/fs/jbd2/jbd2.ko.zst:
";
    const BUILTIN: &str = "\
kernel/net/packet/af_packet.ko
kernel/drivers/hid/hid-generic.ko
kernel/fs/nls/nls_base.ko
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(Path::new("/m"), ALIAS, DEP, BUILTIN)
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files.iter().map(|f| split_module(f).unwrap().0).collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn put(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn g(pat: &str, text: &str) -> bool {
        glob(pat.as_bytes(), text.as_bytes())
    }

    #[test]
    fn glob_stars_and_question_marks() {
        assert!(g("", ""));
        assert!(!g("", "a"));
        assert!(g("*", ""));
        assert!(g("***", "anything/at:all"));
        assert!(g("a*c", "abbbc"));
        assert!(g("a*c", "ac"));
        assert!(!g("a*c", "acb"));
        assert!(g("a*b*c", "aXbYbZc"));
        assert!(g("a?c", "abc"));
        assert!(!g("a?c", "ac"));
        assert!(g("*?", "x"));
        assert!(!g("*??", "x"));
        assert!(g(
            "pci:v00008086d0000100Esv*sd*bc*sc*i*",
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
        ));
    }

    #[test]
    fn glob_classes() {
        assert!(g("[abc]", "b"));
        assert!(!g("[abc]", "d"));
        assert!(g("d01[0-9][0-9]", "d0100"));
        assert!(!g("d01[0-9][0-9]", "d01A0"));
        assert!(g("[A-Fa-f0-9]", "e"));
        assert!(g("[!a-c]", "d"));
        assert!(!g("[!a-c]", "b"));
        assert!(g("[^a-c]", "z"));
        assert!(!g("[^a-c]", "a"));
        // `]` first and `-` first or last are literal members.
        assert!(g("[]a]", "]"));
        assert!(g("[!]]", "x"));
        assert!(!g("[!]]", "]"));
        assert!(g("[-a]", "-"));
        assert!(g("[a-]", "-"));
        assert!(!g("[a-]", "b"));
        // Unclosed `[` is itself literal; `\` escapes.
        assert!(g("a[b", "a[b"));
        assert!(!g("a[b", "ab"));
        assert!(g(r"a\*", "a*"));
        assert!(!g(r"a\*", "ab"));
        assert!(g(r"\[x]", "[x]"));
        assert!(g(r"[\]]", "]"));
        assert!(g("*[0-9]", "abc7"));
        assert!(!g("*[0-9]", "abc"));
        assert!(!g("[z-a]x", "x"));
    }

    #[test]
    fn glob_hostile_stars_stay_polynomial() {
        let text = "a".repeat(20_000);
        let pattern = format!("{}b", "*a".repeat(30));
        let start = std::time::Instant::now();
        assert!(!g(&pattern, &text));
        assert!(g(&pattern, &format!("{text}b")));
        assert!(g(&"*".repeat(30), &text));
        // Exponential backtracking would never finish; this is milliseconds.
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn alias_normalisation_spares_classes() {
        assert_eq!(
            normalize_alias("of:Nfoo-bar[a-z]x-y"),
            "of:Nfoo_bar[a-z]x_y"
        );
        assert_eq!(normalize_alias("x-[-"), "x_[_");
        assert_eq!(normalize_name("usb-storage"), "usb_storage");
    }

    #[test]
    fn matching_realistic_modaliases() {
        let idx = index();
        let m = |alias: &str| idx.matching(alias);
        assert_eq!(
            m("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"),
            ["e1000"]
        );
        assert_eq!(
            m("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            ["ahci"]
        );
        assert_eq!(
            m("pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02"),
            ["nvme"]
        );
        assert_eq!(
            m("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(m("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        // Two usb_storage patterns match (device id and class): one name.
        assert_eq!(
            m("usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00"),
            ["usb_storage"]
        );
        assert_eq!(
            m("usb:v174Cp55AAd0100dc00dsc00dp00ic08isc06ip62in01"),
            ["uas"]
        );
        assert_eq!(m("acpi:PNP0A03:"), ["ghost_driver"]);
        // modprobe-style lookup: `-` and `_` are one.
        assert_eq!(m("fs-ext4"), ["ext4"]);
        assert_eq!(m("fs_ext4"), ["ext4"]);
        assert!(m("pci:v000010ECd00008168sv*").is_empty());
        assert!(m("").is_empty());
    }

    #[test]
    fn sysfs_walk_finds_modaliases_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        let dev = sys.join("devices");
        put(
            &dev,
            "pci0000:00/0000:00:02.0/modalias",
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00\n",
        );
        put(
            &dev,
            "pci0000:00/0000:00:03.0/modalias",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
        );
        put(
            &dev,
            "pci0000:00/0000:00:03.0/virtio0/modalias",
            "virtio:d00000002v00001AF4\n",
        );
        put(
            &dev,
            "pci0000:00/0000:00:04.0/usb1/1-1/1-1:1.0/modalias",
            "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00\n",
        );
        put(&dev, "LNXSYSTM:00/PNP0A03:00/modalias", "acpi:PNP0A03:\n");
        put(&dev, "LNXSYSTM:00/PNP0A03:01/modalias", "acpi:PNP0A03:\n");
        put(&dev, "virtual/empty/modalias", "\n");
        fs::create_dir_all(dev.join("virtual/odd/modalias")).unwrap();
        // Loops, as sysfs has them (`subsystem`, `device`, `driver` links).
        symlink("../..", dev.join("pci0000:00/0000:00:02.0/subsystem")).unwrap();
        symlink(".", dev.join("pci0000:00/loop")).unwrap();
        // Neither a linked directory nor a linked attribute is read.
        put(sys, "elsewhere/modalias", "pci:vDEADBEEF\n");
        symlink(sys.join("elsewhere"), dev.join("linked")).unwrap();
        symlink(sys.join("elsewhere/modalias"), dev.join("virtual/modalias")).unwrap();
        // Deeper than MAX_DEPTH: not reached.
        let deep = (0..MAX_DEPTH + 2)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("/");
        put(&dev, &format!("{deep}/modalias"), "pci:vTOODEEP\n");

        let found = modaliases(sys);
        assert_eq!(
            found,
            [
                "acpi:PNP0A03:",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
                "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00",
                "virtio:d00000002v00001AF4",
            ]
        );
        let idx = index();
        let wanted: BTreeSet<String> = found.iter().flat_map(|a| idx.matching(a)).collect();
        assert_eq!(
            wanted.into_iter().collect::<Vec<_>>(),
            [
                "e1000",
                "ghost_driver",
                "usb_storage",
                "virtio_blk",
                "virtio_pci"
            ]
        );
        assert!(modaliases(&sys.join("nonexistent")).is_empty());
    }

    #[test]
    fn load_order_puts_diamond_dependencies_first_once() {
        let (files, missing) = index().load_order(&strings(&["ahci", "sd_mod"]));
        assert_eq!(
            names(&files),
            [
                "scsi_common",
                "scsi_mod",
                "libata",
                "libahci",
                "ahci",
                "sd_mod"
            ]
        );
        assert_eq!(
            files[0],
            Path::new("/m/kernel/drivers/scsi/scsi_common.ko.xz")
        );
        assert!(missing.is_empty());
    }

    #[test]
    fn load_order_breaks_cycles() {
        let idx = ModuleIndex::parse(
            Path::new("/m"),
            "",
            "a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\nd.ko: d.ko a.ko\n",
            "",
        );
        let (files, missing) = idx.load_order(&strings(&["d", "c", "a", "b"]));
        assert_eq!(names(&files), ["c", "b", "a", "d"]);
        assert!(missing.is_empty());
    }

    #[test]
    fn load_order_normalises_skips_builtin_and_reports_missing() {
        let wanted = strings(&[
            "usb-storage",
            "usb_storage",
            "af_packet",
            "hid_generic",
            "nope",
            "ext4",
        ]);
        let (files, missing) = index().load_order(&wanted);
        assert_eq!(
            names(&files),
            [
                "jbd2",
                "mbcache",
                "ext4",
                "scsi_common",
                "scsi_mod",
                "usb_common",
                "usbcore",
                "usb_storage"
            ]
        );
        assert_eq!(
            files[7],
            Path::new("/m/kernel/drivers/usb/storage/usb-storage.ko.xz")
        );
        // crc16 is a dependency absent from modules.dep; nope is unknown.
        assert_eq!(missing, ["crc16", "nope"]);
    }

    #[test]
    fn parse_tolerates_junk() {
        let idx = ModuleIndex::parse(
            Path::new("/m"),
            "alias\nalias x\n#c\n",
            ":\nno colon\nfoo.txt: bar.ko\n.ko:\nx.ko: .ko y\n",
            "\n",
        );
        let (files, missing) = idx.load_order(&strings(&["x", "foo"]));
        assert_eq!(names(&files), ["x"]);
        assert_eq!(missing, ["foo"]);
    }

    #[test]
    fn module_file_names() {
        let split = |p: &str| split_module(Path::new(p));
        assert_eq!(
            split("a/usb-storage.ko.xz"),
            Some(("usb_storage".into(), Compression::Xz))
        );
        assert_eq!(
            split("ext4.ko.zst"),
            Some(("ext4".into(), Compression::Zstd))
        );
        assert_eq!(
            split("vfat.ko.gz"),
            Some(("vfat".into(), Compression::Gzip))
        );
        assert_eq!(split("nvme.ko"), Some(("nvme".into(), Compression::None)));
        assert_eq!(split("nvme.ko.bz2"), None);
        assert_eq!(split(".ko"), None);
    }

    #[test]
    fn errno_decisions() {
        assert_eq!(outcome(Ok(())), Ok(Outcome::Loaded));
        assert_eq!(outcome(Err(Errno::EEXIST)), Ok(Outcome::Already));
        assert_eq!(outcome(Err(Errno::ENOENT)), Err(Errno::ENOENT));
        for kind in [Compression::Xz, Compression::Zstd, Compression::Gzip] {
            for e in [Errno::EINVAL, Errno::EOPNOTSUPP, Errno::ENOEXEC] {
                assert!(decompress_in_user_space(kind, e), "{kind:?} {e}");
            }
            for e in [
                Errno::ENOENT,
                Errno::EPERM,
                Errno::EKEYREJECTED,
                Errno::ENODEV,
                Errno::ENOMEM,
            ] {
                assert!(!decompress_in_user_space(kind, e), "{kind:?} {e}");
            }
        }
        assert!(!decompress_in_user_space(Compression::None, Errno::EINVAL));
        assert!(!decompress_in_user_space(Compression::None, Errno::ENOEXEC));
    }

    #[test]
    fn decompresses_each_format_within_bounds() {
        let elf: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..10_000u32).map(|i| (i % 251) as u8))
            .collect();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&elf).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&elf).unwrap();
        let cases = [
            (Compression::Xz, xz.finish().unwrap()),
            (Compression::Zstd, zstd::encode_all(&elf[..], 3).unwrap()),
            (Compression::Gzip, gz.finish().unwrap()),
            (Compression::None, elf.clone()),
        ];
        for (kind, packed) in cases {
            assert_eq!(
                decompress(kind, &packed[..], MAX_MODULE).unwrap(),
                elf,
                "{kind:?}"
            );
            let err = decompress(kind, &packed[..], 1000).unwrap_err();
            assert!(err.to_string().contains("exceeds"), "{kind:?}: {err}");
            if kind != Compression::None {
                assert!(
                    decompress(kind, &elf[..], MAX_MODULE).is_err(),
                    "{kind:?} accepted garbage"
                );
            }
        }
    }

    #[test]
    fn boot_load_rescans_after_bus_drivers_and_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        let dev = sys.join("devices/pci0000:00");
        put(
            &dev,
            "0000:00:02.0/modalias",
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00\n",
        );
        put(
            &dev,
            "0000:00:03.0/modalias",
            "pci:v00001AF4d00001005sv00001AF4sd00000004bc00sc00i00\n",
        );
        put(
            &dev,
            "0000:00:1f.2/modalias",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01\n",
        );
        put(sys, "devices/LNXSYSTM:00/modalias", "acpi:PNP0A03:\n");
        let mut calls = Vec::new();
        let report = index().load_all_with(sys, |file| {
            let name = split_module(file).unwrap().0;
            calls.push(name.clone());
            match name.as_str() {
                // Binding virtio_pci makes the virtio device appear.
                "virtio_pci" => put(
                    &dev,
                    "0000:00:03.0/virtio0/modalias",
                    "virtio:d00000004v00001AF4\n",
                ),
                "scsi_common" => return Ok(Outcome::Already),
                "jbd2" => return Ok(Outcome::Missing),
                "e1000" => return Err("finit_module: ENODEV: No such device".into()),
                _ => {}
            }
            Ok(Outcome::Loaded)
        });
        assert_eq!(calls.iter().filter(|c| *c == "scsi_mod").count(), 1);
        assert_eq!(calls.last().map(String::as_str), Some("virtio_rng"));
        assert!(report.loaded.contains(&"ahci".to_string()));
        assert!(report.loaded.contains(&"usb_storage".to_string()));
        assert_eq!(report.already, ["scsi_common"]);
        assert_eq!(
            report.failed,
            [(
                "e1000".to_string(),
                "finit_module: ENODEV: No such device".to_string()
            )]
        );
        // ALWAYS absentees (vfat, exfat, ...) and built-ins (af_packet) are not news.
        assert_eq!(report.missing, ["crc16", "ghost_driver", "jbd2"]);
        let order = |n: &str| calls.iter().position(|c| c == n).unwrap();
        assert!(order("libata") < order("ahci") && order("scsi_mod") < order("libata"));
    }

    #[test]
    fn index_load_reads_files_and_tolerates_missing_builtin() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ModuleIndex::load(tmp.path()).unwrap_err();
        assert!(format!("{err:#}").contains("modules.alias"), "{err:#}");
        put(tmp.path(), "modules.alias", ALIAS);
        put(tmp.path(), "modules.dep", DEP);
        let idx = ModuleIndex::load(tmp.path()).unwrap();
        assert_eq!(idx.matching("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        let (files, _) = idx.load_order(&strings(&["nvme"]));
        assert_eq!(
            files[1],
            tmp.path().join("kernel/drivers/nvme/host/nvme.ko.xz")
        );
    }

    /// Parses a Debian kernel's real tables when the package is installed.
    #[test]
    fn real_debian_modules_if_present() {
        let dirs: Vec<PathBuf> = fs::read_dir("/lib/modules")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("modules.dep").is_file() && p.join("modules.alias").is_file())
            .collect();
        if dirs.is_empty() {
            eprintln!("skipped: no /lib/modules/<release> with modules.dep and modules.alias");
        }
        for dir in dirs {
            let idx = ModuleIndex::load(&dir).unwrap();
            let (files, _) =
                idx.load_order(&ALWAYS.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert!(
                files.iter().all(|f| split_module(f).is_some()),
                "{}",
                dir.display()
            );
            if idx.deps.contains_key("ahci") {
                let ahci = idx.matching("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01");
                assert!(
                    ahci.contains(&"ahci".to_string()),
                    "{}: {ahci:?}",
                    dir.display()
                );
            }
        }
    }
}
