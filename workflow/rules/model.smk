# A synthetic model (architecture config.json, dummy weights) and its one-word-one-token tokenizer in a separate
# folder: a tokenizer folder holding config.json is read as a model folder by transformers.


rule synthetic_model:
    input:
        architecture=config["model"].get("architecture") or [],
    output:
        config=f"{MODEL_DIR}/model/config.json",
        tokenizer=f"{MODEL_DIR}/tokenizer/tokenizer.json",
    log:
        f"{EXP_DIR}/logs/synthetic_model.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        model_dir=lambda wildcards, output: Path(output.config).parent,
        tokenizer_dir=lambda wildcards, output: Path(output.tokenizer).parent,
    shell:
        "attnbench make-model --architecture {input.architecture} --model-dir {params.model_dir}"
        " --tokenizer-dir {params.tokenizer_dir} > {log} 2>&1"
