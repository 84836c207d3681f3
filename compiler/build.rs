fn main() {
    // Generates the model-language parser from src/frontend/grammar.lalrpop.
    lalrpop::Configuration::new()
        .use_cargo_dir_conventions()
        .process()
        .expect("the grammar of the model language compiles");
}
