//! Test plugin: a well-formed component that does not implement the wasmpush contract (its
//! `run` takes and returns a number), so the engine must refuse to load it.

wit_bindgen::generate!({
    inline: "package test:wrong-contract; world wrong { export run: func(x: u32) -> u32; }",
});

struct Wrong;

impl Guest for Wrong {
    fn run(x: u32) -> u32 {
        x
    }
}

export!(Wrong);
