//! Command line: asr's verbs and options, with asr's legacy single-dash
//! spellings accepted (`reimage -source X -target Y -erase`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "reimage",
    version,
    about = "Block-copy disk images onto disks, like Apple's asr",
    term_width = 80
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Block-copy an image onto a disk, partition or file
    Restore(RestoreArgs),
    /// Restore, resizing the target partition to exactly the image's size
    Restoreexact(RestoreArgs),
    /// Check a prepared image's checksums and order, or convert a raw image
    Imagescan(ImagescanArgs),
    /// Capture a disk, partition or image file into a prepared image
    Imagecreate(ImagecreateArgs),
    /// Write the catalog (images.json) of the prepared images in a directory
    Catalog(CatalogArgs),
    /// Serve a directory of images over HTTP, with /images.json
    Serve(ServeArgs),
    /// Multicast a prepared image to any number of clients, in a loop
    Server(ServerArgs),
    /// List the multicast streams advertised on the network (DNS-SD)
    Browse(BrowseArgs),
    /// Be the rescue system's init (PID 1): drivers, network, menu or unattended restore
    Rescue(RescueArgs),
    /// Show the menu: choose an image and a disk, restore, then reboot
    Menu(MenuArgs),
    /// Print the version
    Version,
}

/// `reimage menu`. Its exit status says what the user chose: 0 the shell,
/// 10 reboot, 11 power off (1 is a failure, as everywhere).
#[derive(Debug, Args)]
pub struct MenuArgs {
    /// List the images of this catalog (an images.json URL, or a server's
    /// URL ending in /); may be repeated
    #[arg(long = "catalog", value_name = "URL")]
    pub catalogs: Vec<String>,
    /// Also list the images in this directory; may be repeated
    #[arg(long = "images", value_name = "DIR")]
    pub image_dirs: Vec<PathBuf>,
    /// Do not look for multicast streams
    #[arg(long)]
    pub no_browse: bool,
    /// Seconds to listen for multicast streams
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub browse_wait: f64,
    /// Restore only images signed by this minisign public key (the key or
    /// a key file)
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<String>,
    /// Also trust the CA certificates in this PEM file (https sources)
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// The sysfs root to list disks from (tests give a fake one)
    #[arg(long, value_name = "DIR", default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    /// The disk the system booted from, never offered as a target
    #[arg(long, value_name = "DISK", hide = true)]
    pub boot_disk: Option<String>,
    /// Run as the rescue system's menu: mount the boot stick's filesystems
    /// to look for images on them
    #[arg(long, hide = true)]
    pub rescue: bool,
}

#[derive(Debug, Args)]
pub struct RescueArgs {
    /// Use this line instead of /proc/cmdline, and this terminal instead
    /// of the consoles (to try the rescue system in a PID namespace)
    #[arg(long, value_name = "LINE")]
    pub cmdline: Option<String>,
}

#[derive(Debug, Args)]
pub struct BrowseArgs {
    /// Seconds to listen for advertisements
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub wait: f64,
    /// One JSON object per line instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Prepared image to stream
    #[arg(long, value_name = "IMAGE")]
    pub source: PathBuf,
    /// Property list with the stream's settings (asr's keys: Data Rate,
    /// Multicast Address, Port, Multicast TTL, ...)
    #[arg(long, value_name = "PLIST")]
    pub config: PathBuf,
    /// Network interface to stream on (default: the first one up)
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of images to serve
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Address and port to listen on
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Also serve this directory under /boot/ (the PXE tree: boot.ipxe,
    /// vmlinuz, initrd.img)
    #[arg(long, value_name = "DIR")]
    pub boot: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key)
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Directory of prepared images (searched recursively)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// How progress and messages are shown.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print more about what is being done
    #[arg(long)]
    pub verbose: bool,
    /// Print error details (the full cause chain and source locations)
    #[arg(long)]
    pub debug: bool,
    /// Machine-readable progress: one event per line (see README)
    #[arg(long)]
    pub puppetstrings: bool,
    /// With --puppetstrings: JSON lines instead of tab-separated fields
    #[arg(long, requires = "puppetstrings")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Image file, raw/.gz/.xz/.zst image, block device, http(s) URL or
    /// mcast://SERVER[:PORT]
    #[arg(long, value_name = "SOURCE")]
    pub source: String,
    /// Block device or file to erase and write
    #[arg(
        long,
        value_name = "TARGET",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub target: Option<PathBuf>,
    /// Write the image to this file; a directory means a file in it named
    /// after the image (--erase replaces an existing file)
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Restore only this volume of a .dmg that holds several: its number
    /// (from 1) or its name
    #[arg(long, value_name = "VOLUME")]
    pub sourcevolume: Option<String>,
    /// Give up when no data has arrived for this many seconds (multicast;
    /// 0 = never)
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub timeout: u64,
    /// Erase the target (required: a restore overwrites everything on it)
    #[arg(long)]
    pub erase: bool,
    /// Do not ask for confirmation before erasing
    #[arg(long)]
    pub noprompt: bool,
    /// Skip reading the target back to verify it
    #[arg(long)]
    pub noverify: bool,
    /// Number of copy buffers
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=1024))]
    pub buffers: u32,
    /// Size of each copy buffer (k, m, g suffixes)
    #[arg(long, default_value = "1m", value_parser = parse_buffer_size)]
    pub buffersize: u64,
    /// Number of verification buffers (one reader thread each)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub csumbuffers: u32,
    /// Size of each verification buffer (k, m, g suffixes)
    #[arg(long, default_value = "1m", value_parser = parse_buffer_size)]
    pub csumbuffersize: u64,
    /// Parallel connections for a prepared image over HTTP
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
    /// Attempts after the first before a network request is given up
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: u32,
    /// Require IMAGE.minisig, a signature by this minisign public key (the
    /// key or a key file) over the image's manifest
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<String>,
    /// Also trust the CA certificates in this PEM file (https sources)
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ImagescanArgs {
    /// Prepared image to check, or raw image (.img, .img.gz/.xz/.zst) to convert
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Where to write the prepared image made from a raw one
    /// (default: beside it, named NAME.rimg)
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the image's manifest to FILE, for signing with
    /// `minisign -S -m FILE -x IMAGE.minisig`
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub create: CreateTuning,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ImagecreateArgs {
    /// Disk, partition or image file to capture
    #[arg(long, value_name = "SOURCE")]
    pub source: PathBuf,
    /// Prepared image to write
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    #[command(flatten)]
    pub create: CreateTuning,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Knobs shared by imagecreate and imagescan's conversion.
#[derive(Debug, Args)]
pub struct CreateTuning {
    /// Largest chunk: a multiple of 4k up to 16m (k, m suffixes)
    #[arg(long, default_value = "1m", value_parser = parse_buffer_size)]
    pub chunksize: u64,
    /// zstd compression level (1 fastest .. 19 smallest)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// Name recorded in the image (default: the file name)
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an existing image file
    #[arg(long)]
    pub force: bool,
}

/// A buffer or chunk size: mkfile-style suffixes, 4 KiB .. 1 GiB.
fn parse_buffer_size(s: &str) -> Result<u64, String> {
    let n = crate::util::parse_size(s)?;
    if !(4096..=1 << 30).contains(&n) {
        return Err(format!("'{s}' is out of range (4k to 1g)"));
    }
    Ok(n)
}

/// The first line of a clap usage error without its `error: ` prefix, so
/// bad arguments get the same one-line treatment as every other failure.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    // The message is the first paragraph; some kinds list the missing
    // arguments on the lines below their first.
    let para: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = para.join(" ");
    match joined.strip_prefix("error: ") {
        Some(rest) => rest.to_owned(),
        None if joined.is_empty() => "invalid arguments".to_owned(),
        None => joined,
    }
}

/// asr options that also have single-dash spellings.
const LEGACY: &[&str] = &[
    "source",
    "target",
    "erase",
    "noprompt",
    "noverify",
    "buffers",
    "buffersize",
    "csumbuffers",
    "csumbuffersize",
    "verbose",
    "debug",
    "puppetstrings",
    "imagescan",
    "file",
    "timeout",
    "config",
    "interface",
];

fn is_verb(word: &str) -> bool {
    use clap::CommandFactory;
    word == "help"
        || Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == word)
}

/// Rewrites asr's legacy spellings into the modern ones: `-source` becomes
/// `--source`, `-imagescan IMAGE` becomes `imagescan IMAGE`, and a verb-less
/// `-source … -target …` line becomes a `restore`.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out: Vec<OsString> = args
        .into_iter()
        .enumerate()
        .map(|(i, a)| match a.to_str() {
            Some(s)
                if i > 0 && s.len() > 1 && !s.starts_with("--") && LEGACY.contains(&&s[1..]) =>
            {
                OsString::from(format!("-{s}"))
            }
            _ => a,
        })
        .collect();
    if out.len() > 1 {
        let first = out[1].to_string_lossy().into_owned();
        if first == "--imagescan" {
            out[1] = "imagescan".into();
        } else if !is_verb(&first) && out.iter().any(|a| a == "--source") {
            out.insert(1, "restore".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args.iter().map(OsString::from)))
    }

    #[test]
    fn legacy_restore_spelling() {
        let cli = parse(&[
            "reimage",
            "-source",
            "a.rimg",
            "-target",
            "/dev/sdb",
            "-erase",
            "-noprompt",
        ])
        .unwrap();
        let Command::Restore(r) = cli.command else {
            panic!("not a restore")
        };
        assert_eq!(r.source, "a.rimg");
        assert_eq!(r.target, Some(PathBuf::from("/dev/sdb")));
        assert!(r.erase && r.noprompt && !r.noverify);
    }

    #[test]
    fn legacy_imagescan_spelling() {
        let cli = parse(&["reimage", "-imagescan", "x.rimg"]).unwrap();
        assert!(
            matches!(cli.command, Command::Imagescan(ImagescanArgs { ref image, .. }) if image == &PathBuf::from("x.rimg"))
        );
    }

    #[test]
    fn legacy_options_after_a_verb() {
        let cli = parse(&[
            "reimage",
            "restore",
            "-source",
            "a",
            "-target",
            "b",
            "-noverify",
            "--buffersize",
            "4m",
        ])
        .unwrap();
        let Command::Restore(r) = cli.command else {
            panic!("not a restore")
        };
        assert!(r.noverify && !r.erase);
        assert_eq!(r.buffersize, 4 << 20);
    }

    #[test]
    fn sizes_and_bounds() {
        let restore_with = |opt: &str, value: &str| {
            parse(&[
                "reimage", "restore", "--source", "a", "--target", "b", opt, value,
            ])
        };
        assert!(restore_with("--buffersize", "12q").is_err());
        assert!(restore_with("--buffersize", "1k").is_err());
        assert!(restore_with("--buffers", "1").is_err());
        assert!(restore_with("--buffersize", "2m").is_ok());
        assert!(
            parse(&[
                "reimage",
                "imagecreate",
                "--source",
                "a",
                "--image",
                "b",
                "--level",
                "30"
            ])
            .is_err()
        );
    }

    #[test]
    fn usage_errors_become_one_line() {
        let e = parse(&["reimage", "restore", "--source", "a", "--bogus"]).unwrap_err();
        let line = one_line(&e);
        assert!(line.contains("--bogus"), "{line}");
        assert!(!line.contains('\n') && !line.starts_with("error"));
        let e = parse(&["reimage", "restore", "--target", "b"]).unwrap_err();
        assert!(one_line(&e).contains("--source"), "{}", one_line(&e));
    }

    #[test]
    fn values_that_look_like_words_are_left_alone() {
        let v = normalize_args(
            ["reimage", "restore", "--source", "-x", "--target", "erase"].map(OsString::from),
        );
        assert_eq!(v[3], "-x");
        assert_eq!(v[5], "erase");
    }

    #[test]
    fn help_fits_80_columns() {
        use clap::CommandFactory;
        for sub in ["restore", "imagecreate", "imagescan"] {
            let mut cmd = Cli::command();
            cmd.build();
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_help()
                .to_string();
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "{sub}: {line}");
            }
        }
    }
}
