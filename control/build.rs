fn main() {
    // Migrations are embedded with sqlx::migrate!; a new file must trigger a rebuild.
    println!("cargo:rerun-if-changed=migrations");
}
