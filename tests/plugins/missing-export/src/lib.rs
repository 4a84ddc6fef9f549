//! Exports `warden:policy/policy@0.1.0` without `evaluate`: Warden must refuse it.
wit_bindgen::generate!({ path: "wit", world: "broken" });

struct Broken;

impl exports::warden::policy::policy::Guest for Broken {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

export!(Broken);
