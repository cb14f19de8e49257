//! The test images, built from files on this machine.
//!
//! | image | layers (bottom first) |
//! |---|---|
//! | `pause` | a static C pause program at `/pause` |
//! | `busybox` | busybox-static + its applet symlinks; `/etc/driftguard-layer2.txt` |
//! | `scenario` | the same busybox layer; an `app` layer; an `update` layer that changes it |
//!
//! The scenario image holds every case the drift classifier distinguishes (all under
//! `/opt/scenario` unless noted):
//! - `doomed`: a static ELF added in `app` and deleted by a whiteout in `update`;
//! - `changing`: a static ELF in `app`, replaced by a different ELF in `update`;
//! - `noexec-elf`: an ELF shipped with mode 0644;
//! - `hello.sh`: a shebang script (mode 0755);
//! - `opaque/`: a directory with `old-a`, `old-b` in `app`, made opaque in `update` with `new-c`;
//! - `/lib64/ld-linux-x86-64.so.2`, `/lib/x86_64-linux-gnu/libc.so.6` and `/usr/bin/gnu-true`
//!   (the host's `true`, dynamically linked): the dynamic loader and a program that needs it;
//! - `/usr/bin/memfd-exec`: copies a file into a memfd and executes that (a fileless exec).
//!
//! Limits: needs `gcc` with static libc (Debian's `libc6-dev`) for the C programs, and an
//! x86-64 host whose `/usr/bin/true` links only against libc.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::oci::{build_image, BuiltImage, ImageConfig, ImageSpec};

/// Reference name of the pause (sandbox) image.
pub const PAUSE: &str = "localhost/driftguard/pause:1";
/// Reference name of the busybox image.
pub const BUSYBOX: &str = "localhost/driftguard/busybox:1";
/// Reference name of the multi-layer scenario image.
pub const SCENARIO: &str = "localhost/driftguard/scenario:1";

const C_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/c");

/// Builds `pause.oci.tar`, `busybox.oci.tar` and `scenario.oci.tar` in `out`.
pub fn build_all(busybox: &Path, out: &Path) -> Result<Vec<(String, BuiltImage)>> {
    fs::create_dir_all(out)?;
    let work = tempfile::tempdir()?;
    let w = work.path();

    let pause = w.join("pause");
    fs::create_dir_all(&pause)?;
    compile(
        &Path::new(C_DIR).join("pause.c"),
        &pause.join("pause"),
        None,
    )?;

    let base = w.join("busybox-base");
    busybox_layer(busybox, &base)?;
    let bb2 = w.join("busybox-2");
    fs::create_dir_all(bb2.join("etc"))?;
    fs::write(
        bb2.join("etc/driftguard-layer2.txt"),
        "layer 2 of the busybox image\n",
    )?;

    let app = w.join("scenario-app");
    app_layer(&app)?;
    let update = w.join("scenario-update");
    update_layer(&update)?;

    let shell = ImageConfig {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        ..Default::default()
    };
    let specs = [
        (
            "pause",
            ImageSpec {
                name: PAUSE.into(),
                layers: vec![pause],
                config: ImageConfig {
                    entrypoint: vec!["/pause".into()],
                    ..Default::default()
                },
            },
        ),
        (
            "busybox",
            ImageSpec {
                name: BUSYBOX.into(),
                layers: vec![base.clone(), bb2],
                config: shell.clone(),
            },
        ),
        (
            "scenario",
            ImageSpec {
                name: SCENARIO.into(),
                layers: vec![base, app, update],
                config: shell,
            },
        ),
    ];
    let mut built = Vec::new();
    for (file, spec) in specs {
        let image = build_image(&spec, &out.join(format!("{file}.oci.tar")))
            .with_context(|| format!("building {}", spec.name))?;
        built.push((spec.name, image));
    }
    Ok(built)
}

/// busybox-static at `/bin/busybox` with one symlink per applet, plus the usual skeleton.
fn busybox_layer(busybox: &Path, dir: &Path) -> Result<()> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "usr/bin"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(busybox, dir.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    ensure!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8(list.stdout)?.lines() {
        if applet != "busybox" && !applet.is_empty() {
            symlink("busybox", dir.join("bin").join(applet))?;
        }
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

fn app_layer(dir: &Path) -> Result<()> {
    let opt = dir.join("opt/scenario");
    fs::create_dir_all(opt.join("opaque"))?;
    compile_hello(
        &opt.join("doomed"),
        "doomed: shipped in app, deleted by update",
        0o755,
    )?;
    compile_hello(&opt.join("changing"), "changing: version 1 from app", 0o755)?;
    compile_hello(
        &opt.join("noexec-elf"),
        "noexec-elf: shipped without x bits",
        0o644,
    )?;
    write_mode(
        &opt.join("hello.sh"),
        "#!/bin/sh\necho hello from the image script\n",
        0o755,
    )?;
    fs::write(opt.join("opaque/old-a"), "a\n")?;
    fs::write(opt.join("opaque/old-b"), "b\n")?;
    fs::create_dir_all(dir.join("usr/bin"))?;
    compile(
        &Path::new(C_DIR).join("memfd-exec.c"),
        &dir.join("usr/bin/memfd-exec"),
        None,
    )?;
    dynamic_program(dir, Path::new("/usr/bin/true"), "usr/bin/gnu-true")
}

fn update_layer(dir: &Path) -> Result<()> {
    let opt = dir.join("opt/scenario");
    fs::create_dir_all(opt.join("opaque"))?;
    fs::write(opt.join(".wh.doomed"), "")?;
    compile_hello(
        &opt.join("changing"),
        "changing: version 2 from update",
        0o755,
    )?;
    fs::write(opt.join("opaque/.wh..wh..opq"), "")?;
    fs::write(opt.join("opaque/new-c"), "c\n")?;
    fs::create_dir_all(dir.join("etc"))?;
    fs::write(dir.join("etc/scenario-release"), "scenario 1\n")?;
    Ok(())
}

fn write_mode(path: &Path, content: &str, mode: u32) -> Result<()> {
    fs::write(path, content)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn compile_hello(out: &Path, message: &str, mode: u32) -> Result<()> {
    compile(&Path::new(C_DIR).join("hello.c"), out, Some(message))?;
    fs::set_permissions(out, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Compiles a static, stripped C program.
pub fn compile(src: &Path, out: &Path, message: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("gcc");
    cmd.args(["-static", "-Os", "-s", "-o"]).arg(out).arg(src);
    if let Some(m) = message {
        cmd.arg(format!("-DMESSAGE=\"{m}\""));
    }
    let res = cmd
        .output()
        .context("running gcc (install gcc and libc6-dev)")?;
    if !res.status.success() {
        bail!(
            "gcc {}: {}",
            src.display(),
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(())
}

/// Copies a dynamically linked host program and the libraries `ldd` names into the layer.
fn dynamic_program(dir: &Path, program: &Path, dest: &str) -> Result<()> {
    let ldd = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    ensure!(ldd.status.success(), "ldd {} failed", program.display());
    for line in String::from_utf8(ldd.stdout)?.lines() {
        // Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vdso has no path.
        let path = match line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
        {
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            _ => continue,
        };
        let target = dir.join(path.strip_prefix("/")?);
        fs::create_dir_all(target.parent().context("library path has no parent")?)?;
        fs::copy(fs::canonicalize(&path)?, &target)
            .with_context(|| format!("copying {}", path.display()))?;
    }
    let target = dir.join(dest);
    fs::create_dir_all(target.parent().context("program path has no parent")?)?;
    fs::copy(program, &target)?;
    Ok(())
}
