//! The Debian package: `scripts/package.sh` (what `make package` runs) builds a .deb
//! that dpkg installs into a PostgreSQL 15 without mmr and without Rust -- a second
//! PostgreSQL installation in a scratch root, with its own dpkg database -- where
//! `CREATE EXTENSION mmr` then works, and a table replicates between two such servers.

use mmr_tests::{repo_root, stdout_of, Cluster, Options};
use std::process::Command;
use std::time::Duration;

/// Scenario: a DBA installs the package on a host that has PostgreSQL 15 and no Rust,
/// adds mmr to shared_preload_libraries, and creates the extension.
#[test]
fn the_package_installs_into_a_clean_postgresql_15() {
    // A debug build: the same packaging as `make package`, without a release build.
    let deb = stdout_of(Command::new(repo_root().join("scripts/package.sh")).arg("--debug").current_dir(repo_root()));
    let deb = repo_root().join(deb.trim());
    let version = env!("CARGO_PKG_VERSION");
    assert!(deb.ends_with(format!("mmr_{version}_amd64.deb")), "{}", deb.display());
    let info = stdout_of(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for field in ["Package: postgresql-15-mmr", &format!("Version: {version}"), "Depends: postgresql-15"] {
        assert!(info.contains(field), "no {field:?} in:\n{info}");
    }
    let files = stdout_of(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/lib/postgresql/15/lib/mmr.so",
        "./usr/share/postgresql/15/extension/mmr.control",
        &format!("./usr/share/postgresql/15/extension/mmr--{version}.sql"),
        "./usr/share/postgresql/15/extension/mmr--0.1.0--0.2.0.sql",
        "./usr/share/postgresql/15/extension/mmr--0.2.0--0.3.0.sql",
    ] {
        assert!(files.contains(f), "the package lacks {f}:\n{files}");
    }

    // What `apt install ./mmr_<version>_amd64.deb` would do on this host: its
    // dependencies resolve against the installed PostgreSQL 15 (simulated: the host
    // keeps the build `make test` installed).
    let apt = stdout_of(Command::new("apt-get").args(["install", "-s", "-y"]).arg(&deb));
    assert!(apt.contains(&format!("Inst postgresql-15-mmr ({version}")), "{apt}");
    assert!(!apt.contains("unmet dependencies"), "{apt}");

    // A scratch root with PostgreSQL 15 (no mmr) and an empty dpkg database.
    let root = repo_root().join("target/mmr-clusters/package-root");
    let _ = std::fs::remove_dir_all(&root);
    stdout_of(Command::new(repo_root().join("scripts/pg-tree.sh")).arg(&root));
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let mut dpkg = Command::new("dpkg");
    // postgresql-15 is installed on the host, not in the scratch root's database.
    dpkg.arg(format!("--root={}", root.display())).args(["--force-depends", "--force-not-root", "-i"]).arg(&deb);
    stdout_of(&mut dpkg);
    let status =
        stdout_of(Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-s", "postgresql-15-mmr"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    stdout_of(Command::new("chmod").args(["-R", "a+rX"]).arg(&root));

    let bin = root.join("usr/lib/postgresql/15/bin").display().to_string();
    let mut c = Cluster::start_with("package", 2, Options { bin: Some(bin), ..Options::default() });
    assert_eq!(c.text(0, "SELECT extversion FROM pg_extension WHERE extname = 'mmr'"), version);
    let lib = c.text(0, "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'");
    assert!(lib.starts_with(root.to_str().unwrap()), "the server runs from {lib}, not the scratch root");
    c.replicated_table("CREATE TABLE t (id bigint PRIMARY KEY DEFAULT mmr.global_id(), v text)", "t");
    c.mesh();
    c.exec(0, "INSERT INTO t (v) VALUES ('from the package')");
    c.wait_until(1, "SELECT count(*) = 1 FROM t", Duration::from_secs(60));
    drop(c);
    let _ = std::fs::remove_dir_all(&root);
}
