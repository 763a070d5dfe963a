//! Rebuilds the crate when a migration is added or changed: `embed_migrations!` reads the
//! `migrations` folder at compile time, and cargo does not otherwise notice a new folder in it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations-mysql");
    println!("cargo:rerun-if-changed=migrations-sqlite");
}
