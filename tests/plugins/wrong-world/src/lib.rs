//! A valid component for the wrong world: Warden must refuse it at load.
wit_bindgen::generate!({ path: "wit", world: "other" });

struct Other;

impl Guest for Other {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Other);
