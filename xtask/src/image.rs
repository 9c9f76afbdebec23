//! `cargo xtask image`: the container image, built here without a registry or a
//! container engine.
//!
//! The static (musl) `tuneprobe` goes alone into a `FROM scratch`-style image, written
//! as an OCI image archive: a tar holding an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) with one uncompressed layer. The same tar also
//! carries a Docker `manifest.json`, so `docker load` of Docker releases older than 25
//! (which know only that format) takes it too. `ctr image import`, `docker load` and
//! `podman load` read it; `deploy/Containerfile` is the registry-based recipe for
//! builders that have a registry at hand.
//!
//! The binary sits at `/usr/local/bin/tuneprobe` (on PATH, so `kubectl debug ... --
//! tuneprobe top` finds it, as with the Containerfile's image) and `/tuneprobe` links to
//! it (the entrypoint).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{run_to_stderr, setup, workspace_root};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Where the binary is in the image, and the entrypoint that links to it.
const BINARY_IN_IMAGE: &str = "usr/local/bin/tuneprobe";
const ENTRYPOINT: &str = "/tuneprobe";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image's name and tag (default: tuneprobe:VERSION). containerd and Docker
    /// see it as docker.io/library/NAME:TAG unless NAME has a registry host.
    #[arg(long, value_name = "NAME:TAG")]
    name: Option<String>,
    /// Where to write the OCI image archive.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/image/tuneprobe-oci.tar"
    )]
    out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum ImageError {
    #[error(
        "{0} is dynamically linked (it names an ELF interpreter): a scratch image has no \
         libc for it"
    )]
    NotStatic(PathBuf),
    #[error("{0} is not a 64-bit little-endian ELF file")]
    NotElf64(PathBuf),
    #[error("image name {0:?} has no tag (NAME:TAG)")]
    NoTag(String),
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // Only what this build needs: the eBPF toolchain, the musl target and musl-gcc.
    setup::toolchain()?;
    setup::musl_target()?;
    setup::ensure_debian(&["musl-tools"])?;
    let root = workspace_root();
    run_to_stderr(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "probe-user",
        "--target",
        setup::MUSL_TARGET,
    ]))?;
    let binary = root
        .join("target")
        .join(setup::MUSL_TARGET)
        .join("release/tuneprobe");
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("tuneprobe:{VERSION}"));
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    let digest = write_archive(&binary, &name, &out)?;
    println!(
        "image {name} (manifest {digest}) written to {path}\n\
         load it with: ctr -n k8s.io image import {path}\n\
         \x20         or: docker load -i {path}   or: podman load -i {path}",
        path = out.display()
    );
    Ok(())
}

/// Writes the OCI image archive of `binary` named `name` to `out`; returns the
/// manifest's digest.
fn write_archive(binary: &Path, name: &str, out: &Path) -> anyhow::Result<String> {
    let program = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    ensure_static(&program, binary)?;
    let (repository, tag) = split_name(name)?;
    let full_name = qualified_name(name);
    let mtime = fs::metadata(binary)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let layer = layer_tar(&program, mtime)?;
    let layer_digest = sha256(&layer);
    let config = image_config(mtime, &layer_digest)?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config_digest, config.len()),
        "layers": [descriptor(MEDIA_LAYER, &layer_digest, layer.len())],
    }))?;
    let manifest_digest = sha256(&manifest);
    let mut manifest_entry = descriptor(MEDIA_MANIFEST, &manifest_digest, manifest.len());
    manifest_entry["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    // containerd (`ctr image import`) and Docker 25+ name the image from
    // io.containerd.image.name; podman and the OCI tools from ref.name.
    manifest_entry["annotations"] = json!({
        "io.containerd.image.name": full_name,
        "org.opencontainers.image.ref.name": format!("{repository}:{tag}"),
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [manifest_entry],
    }))?;
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob_path(&config_digest),
        "RepoTags": [format!("{repository}:{tag}")],
        "Layers": [blob_path(&layer_digest)],
    }]))?;

    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written beside and renamed: a reader never sees half an archive.
    let partial = out.with_extension("tar.partial");
    let file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
    archive.mode(tar::HeaderMode::Deterministic);
    append_dir(&mut archive, "blobs/", mtime)?;
    append_dir(&mut archive, "blobs/sha256/", mtime)?;
    for (path, data) in [
        (
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
        ),
        (blob_path(&layer_digest).as_str(), &layer),
        (blob_path(&config_digest).as_str(), &config),
        (blob_path(&manifest_digest).as_str(), &manifest),
        ("index.json", &index),
        ("manifest.json", &docker_manifest),
    ] {
        append_file(&mut archive, path, data, 0o644, mtime)?;
    }
    archive
        .into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(manifest_digest)
}

/// The image's configuration: the entrypoint, `serve` by default, and its one layer.
fn image_config(mtime: u64, layer_digest: &str) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&json!({
        "created": rfc3339(mtime),
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [ENTRYPOINT],
            "Cmd": ["serve"],
            "Env": ["PATH=/usr/local/bin"],
            "Labels": {
                "org.opencontainers.image.title": "tuneprobe",
                "org.opencontainers.image.version": VERSION,
            },
        },
        // The layer is stored uncompressed, so its diff id is its digest.
        "rootfs": { "type": "layers", "diff_ids": [&layer_digest] },
        "history": [{ "created": rfc3339(mtime), "created_by": "cargo xtask image" }],
    }))?)
}

/// The image's one layer: the binary, its directories and the entrypoint link.
fn layer_tar(program: &[u8], mtime: u64) -> anyhow::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["usr/", "usr/local/", "usr/local/bin/"] {
        append_dir(&mut layer, dir, mtime)?;
    }
    append_file(&mut layer, BINARY_IN_IMAGE, program, 0o755, mtime)?;
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    link.set_mtime(mtime);
    layer.append_link(
        &mut link,
        ENTRYPOINT.trim_start_matches('/'),
        BINARY_IN_IMAGE,
    )?;
    Ok(layer.into_inner()?)
}

fn append_dir<W: std::io::Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    mtime: u64,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(mtime);
    archive.append_data(&mut header, path, std::io::empty())?;
    Ok(())
}

fn append_file<W: std::io::Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
    mtime: u64,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(mtime);
    archive.append_data(&mut header, path, data)?;
    Ok(())
}

/// A scratch image has no dynamic loader: a binary that names one cannot start there,
/// and fails with a bare "no such file or directory", so refuse it here.
fn ensure_static(elf: &[u8], path: &Path) -> Result<(), ImageError> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // ELFCLASS64, ELFDATA2LSB.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err(ImageError::NotElf64(path.to_path_buf()));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(ImageError::NotElf64(path.to_path_buf()));
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        match u32_at(at) {
            Some(PT_INTERP) => return Err(ImageError::NotStatic(path.to_path_buf())),
            Some(_) => {}
            None => return Err(ImageError::NotElf64(path.to_path_buf())),
        }
    }
    Ok(())
}

/// `NAME:TAG` into its parts (a registry host's port is not a tag).
fn split_name(name: &str) -> Result<(&str, &str), ImageError> {
    match name.rsplit_once(':') {
        Some((repository, tag))
            if !repository.is_empty() && !tag.contains('/') && !tag.is_empty() =>
        {
            Ok((repository, tag))
        }
        _ => Err(ImageError::NoTag(name.to_string())),
    }
}

/// The fully qualified reference containerd stores (`docker.io/library/tuneprobe:0.1.0`),
/// as Docker's normalisation would make it.
fn qualified_name(name: &str) -> String {
    let first = name.split('/').next().unwrap_or_default();
    let has_host =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Seconds since the epoch as an RFC 3339 UTC time (the config's `created`).
fn rfc3339(secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn names_are_qualified_as_docker_does() {
        assert_eq!(
            qualified_name("tuneprobe:0.1.0"),
            "docker.io/library/tuneprobe:0.1.0"
        );
        assert_eq!(qualified_name("me/tuneprobe:1"), "docker.io/me/tuneprobe:1");
        assert_eq!(
            qualified_name("registry.local:5000/tuneprobe:1"),
            "registry.local:5000/tuneprobe:1"
        );
        assert!(split_name("registry.local:5000/tuneprobe").is_err());
        assert_eq!(
            split_name("tuneprobe:0.1.0").unwrap(),
            ("tuneprobe", "0.1.0")
        );
    }

    #[test]
    fn dynamic_binaries_are_refused() {
        // This test binary is linked against glibc: it names an interpreter.
        let me = std::env::current_exe().unwrap();
        let elf = fs::read(&me).unwrap();
        assert!(matches!(
            ensure_static(&elf, &me),
            Err(ImageError::NotStatic(_))
        ));
        assert!(matches!(
            ensure_static(b"#!/bin/sh\n", &me),
            Err(ImageError::NotElf64(_))
        ));
    }

    /// The archive's blobs are where the index and manifest say, with the digests and
    /// sizes they say, and the layer holds the binary at both paths.
    #[test]
    fn archive_is_a_consistent_oci_layout() {
        let dir = std::env::temp_dir().join(format!("xtask-image-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // A minimal static ELF header: class 64, little-endian, no program headers.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let binary = dir.join("tuneprobe");
        fs::write(&binary, &elf).unwrap();
        let out = dir.join("image.tar");
        let digest = write_archive(&binary, "tuneprobe:9.9.9", &out).unwrap();

        let mut files = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(path, data);
        }
        let _ = fs::remove_dir_all(&dir);
        let blob = |digest: &str| -> &Vec<u8> {
            let data = &files[&blob_path(digest)];
            assert_eq!(sha256(data), digest, "blob content matches its digest");
            data
        };
        let json = |data: &[u8]| -> Value { serde_json::from_slice(data).unwrap() };

        assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
        let index = json(&files["index.json"]);
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], digest.as_str());
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "docker.io/library/tuneprobe:9.9.9"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "tuneprobe:9.9.9"
        );
        let manifest_bytes = blob(&digest);
        assert_eq!(entry["size"].as_u64(), Some(manifest_bytes.len() as u64));
        let manifest = json(manifest_bytes);
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config = json(blob(config_digest));
        assert_eq!(config["config"]["Entrypoint"], json!(["/tuneprobe"]));
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        let layer_digest = layers[0]["digest"].as_str().unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], json!([layer_digest]));

        let mut layer = tar::Archive::new(blob(layer_digest).as_slice());
        let mut seen = Vec::new();
        for entry in layer.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path == BINARY_IN_IMAGE {
                assert_eq!(entry.header().mode().unwrap() & 0o777, 0o755);
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                assert_eq!(data, elf);
            }
            if path == "tuneprobe" {
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_string_lossy(),
                    BINARY_IN_IMAGE
                );
            }
            seen.push(path);
        }
        assert!(seen.contains(&BINARY_IN_IMAGE.to_string()), "{seen:?}");
        assert!(seen.contains(&"tuneprobe".to_string()), "{seen:?}");

        let docker = json(&files["manifest.json"]);
        assert_eq!(docker[0]["RepoTags"], json!(["tuneprobe:9.9.9"]));
        assert_eq!(docker[0]["Config"], blob_path(config_digest));
    }
}
