use std::process::ExitCode;

use clap::Parser;

use reimage::cli::{Cli, Command, CreateTuning, OutputArgs, normalize_args};
use reimage::image::{self, CreateOptions, ScanOptions};
use reimage::progress::{HumanProgress, MachineProgress, ProgressSink};
use reimage::restore::{self, RestoreOptions};

/// musl's allocator is slow under threads and hands large blocks back to
/// the kernel at once, so every chunk buffer is page-faulted in again
/// (profiled: the multicast receiver spent ~10 % in page faults and
/// malloc); mimalloc keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // As the initramfs's /init the kernel passes whatever it did not
    // understand on its command line as arguments: they are not ours.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::process::id() == 1 && std::path::Path::new(&argv0).file_name() == Some("init".as_ref())
    {
        let failed = reimage::rescue::init::run(Default::default());
        eprintln!("reimage: {:#}", failed.unwrap_err());
        return ExitCode::FAILURE;
    }
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(cli) => cli,
        // --help and --version are not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A bare `reimage`: the overview is more useful than one line.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "reimage: {} (see 'reimage help')",
                reimage::cli::one_line(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    let debug = match &cli.command {
        Command::Restore(a) | Command::Restoreexact(a) => a.output.debug,
        Command::Imagescan(a) => a.out.debug,
        Command::Imagecreate(a) => a.output.debug,
        Command::Catalog(_)
        | Command::Serve(_)
        | Command::Server(_)
        | Command::Browse(_)
        | Command::Rescue(_)
        | Command::Menu(_)
        | Command::Version => false,
    };
    // The menu ends with a choice, not just success or failure: its exit
    // status tells the rescue system's PID 1 what to do next.
    if let Command::Menu(a) = cli.command {
        return match menu_cmd(a) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("reimage: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line; --debug adds the cause chain with backtrace.
            if debug {
                eprintln!("reimage: {e:?}");
            } else {
                eprintln!("reimage: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn sink(o: &OutputArgs) -> Box<dyn ProgressSink> {
    if o.puppetstrings {
        Box::new(MachineProgress::new(o.json, o.verbose))
    } else {
        Box::new(HumanProgress::new(o.verbose))
    }
}

fn create_options(t: &CreateTuning) -> anyhow::Result<CreateOptions> {
    Ok(CreateOptions {
        chunk_size: u32::try_from(t.chunksize)
            .map_err(|_| anyhow::anyhow!("--chunksize is too large"))?,
        level: t.level,
        name: t.name.clone(),
        force: t.force,
        workers: 0,
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Restore(a) => restore_cmd(a, false),
        Command::Restoreexact(a) => restore_cmd(a, true),
        Command::Imagecreate(a) => {
            let progress = sink(&a.output);
            let report = image::create(
                &a.source,
                &a.image,
                &create_options(&a.create)?,
                progress.as_ref(),
            )?;
            progress.note(&report.to_string());
            Ok(())
        }
        Command::Imagescan(a) => {
            let progress = sink(&a.out);
            let opts = ScanOptions {
                output: a.output,
                manifest_out: a.manifest,
                create: create_options(&a.create)?,
            };
            let report = image::scan(&a.image, &opts, progress.as_ref())?;
            if report.reordered {
                progress.note(&format!(
                    "Rewrote {} in streaming order",
                    report.image.display()
                ));
            }
            progress.note(&format!(
                "Image digest: {}",
                image::format::hex(&report.digest)
            ));
            Ok(())
        }
        Command::Catalog(a) => {
            let (catalog, warnings) = reimage::catalog::build(&a.dir)?;
            for w in warnings {
                eprintln!("reimage: {w}");
            }
            println!("{}", serde_json::to_string_pretty(&catalog)?);
            Ok(())
        }
        Command::Serve(a) => {
            let opts = reimage::serve::ServeOptions {
                images: a.images,
                listen: a.listen,
                boot: a.boot,
                tls: a.tls_cert.zip(a.tls_key),
            };
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            reimage::serve::serve(&opts, |addr| {
                let boot = opts
                    .boot
                    .as_ref()
                    .map(|b| format!(", {} at /boot/", b.display()))
                    .unwrap_or_default();
                println!(
                    "Serving {} on {scheme}://{addr}/ (catalog at /images.json{boot})",
                    opts.images.display()
                );
            })
        }
        Command::Server(a) => {
            let opts = reimage::mcast::server::ServerOptions {
                config: reimage::mcast::config::ServerConfig::load(&a.config)?,
                source: a.source,
                interface: a.interface,
            };
            reimage::mcast::server::run(&opts)
        }
        Command::Browse(a) => {
            let wait = std::time::Duration::try_from_secs_f64(a.wait)
                .map_err(|_| anyhow::anyhow!("--wait {}: not a number of seconds", a.wait))?;
            reimage::mcast::dnssd::browse_cmd(wait, a.json, &mut std::io::stdout().lock())
        }
        Command::Rescue(a) => {
            reimage::rescue::init::run(reimage::rescue::init::Options { cmdline: a.cmdline })?;
            Ok(())
        }
        Command::Menu(_) => unreachable!("main runs the menu itself, for its exit status"),
        Command::Version => {
            println!("reimage {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// `reimage menu`: returns the exit status that tells what was chosen.
fn menu_cmd(a: reimage::cli::MenuArgs) -> anyhow::Result<u8> {
    let browse = if a.no_browse {
        None
    } else {
        Some(
            std::time::Duration::try_from_secs_f64(a.browse_wait).map_err(|_| {
                anyhow::anyhow!("--browse-wait {}: not a number of seconds", a.browse_wait)
            })?,
        )
    };
    let opts = reimage::menu::MenuOptions {
        catalogs: a.catalogs,
        image_dirs: a.image_dirs,
        browse,
        pubkey: pubkey(a.pubkey.as_deref())?,
        http: reimage::source::HttpOptions {
            cacert: a.cacert,
            ..Default::default()
        },
        boot_disk: a.boot_disk,
        sys: a.sys,
        rescue: a.rescue,
    };
    let exit = reimage::menu::run(opts)?;
    println!(
        "reimage: {} chosen",
        match exit {
            reimage::menu::Exit::Shell => "shell",
            reimage::menu::Exit::Reboot => "reboot",
            reimage::menu::Exit::PowerOff => "power off",
        }
    );
    Ok(exit.code())
}

/// `--pubkey KEY`: the key itself or a key file.
fn pubkey(arg: Option<&str>) -> anyhow::Result<Option<minisign_verify::PublicKey>> {
    arg.map(reimage::signature::parse_pubkey).transpose()
}

fn restore_cmd(a: reimage::cli::RestoreArgs, exact: bool) -> anyhow::Result<()> {
    let progress = sink(&a.output);
    let opts = RestoreOptions {
        erase: a.erase,
        noprompt: a.noprompt,
        verify: !a.noverify,
        exact,
        buffers: a.buffers as usize,
        buffer_size: a.buffersize as usize,
        csum_buffers: a.csumbuffers as usize,
        csum_buffer_size: a.csumbuffersize as usize,
        workers: 0,
        timeout: (a.timeout > 0).then(|| std::time::Duration::from_secs(a.timeout)),
        name_in_dir: a.file.is_some(),
        stop: Default::default(),
        volume: a.sourcevolume.clone(),
        pubkey: pubkey(a.pubkey.as_deref())?,
        http: reimage::source::HttpOptions {
            connections: a.connections as usize,
            cacert: a.cacert.clone(),
            retries: a.retries,
            ..Default::default()
        },
    };
    let target = a
        .target
        .or(a.file)
        .expect("clap requires --target or --file");
    let report = restore::restore(&a.source, &target, &opts, progress.as_ref())?;
    progress.note(&format!(
        "Restored {} ({} written in {:.1} s{})",
        report.target.display(),
        reimage::util::human_size(report.written),
        report.elapsed.as_secs_f64(),
        if report.verified { ", verified" } else { "" }
    ));
    Ok(())
}
