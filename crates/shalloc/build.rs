//! Gives libshalloc.so its SONAME, so that C programs record `libshalloc.so.0` and keep working
//! across compatible upgrades.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libshalloc.so.0");
}
