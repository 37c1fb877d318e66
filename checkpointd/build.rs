//! With the `xen` feature: generate bindings for libxenctrl/libxenguest from the installed
//! headers (Debian's libxen-dev; these ABIs change between Xen releases, so nothing is checked
//! in) and link against them. Without it: nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "xen")]
    xen::generate();
}

#[cfg(feature = "xen")]
mod xen {
    pub fn generate() {
        println!("cargo:rustc-link-lib=xenctrl");
        println!("cargo:rustc-link-lib=xenguest");
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        let bindings = bindgen::Builder::default()
            .header_contents(
                "wrapper.h",
                "#include <xenctrl.h>\n#include <xenguest.h>\n#include <xen/sched.h>\n",
            )
            .allowlist_function("xc_interface_open")
            .allowlist_function("xc_interface_close")
            .allowlist_function("xc_domain_save")
            .allowlist_function("xc_domain_restore")
            .allowlist_function("xc_domain_pause")
            .allowlist_function("xc_domain_unpause")
            .allowlist_function("xc_domain_shutdown")
            .allowlist_function("xc_domain_resume")
            .allowlist_var("SHUTDOWN_suspend")
            .allowlist_type("save_callbacks")
            .allowlist_type("restore_callbacks")
            .allowlist_type("xc_stream_type_t")
            .allowlist_var("XGR_CHECKPOINT_.*")
            .rustified_enum("xc_stream_type_t")
            .generate()
            .expect(
                "bindgen on xenctrl.h/xenguest.h (install libxen-dev and libclang-dev: make setup)",
            );
        bindings
            .write_to_file(out.join("xen_bindings.rs"))
            .expect("write bindings");
    }
}
