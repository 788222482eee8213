"""Checkpoint tools: inspect runs, convert megatron-core dist checkpoints to and from Hugging Face
formats with logit parity, and export / evaluate the intermediate-checkpoint series.

    python -m checkpoints_tools inspect RUN_DIR [--json]
    python -m checkpoints_tools export-hf RUN_DIR/checkpoints/iter_0000400 --out HF [--format llama|baichuan] [--dtype bf16]
    python -m checkpoints_tools import-hf HF --out CKPT_DIR --tp 2 --pp 2
    python -m checkpoints_tools export-series RUN_DIR --out EXPORTS [--format ...] [--milestones-only]
    python -m checkpoints_tools make-task heldout.txt --out TASKS --name cloze_en
    python -m checkpoints_tools eval-series EXPORTS --text heldout.txt [--data PREFIX] [--tasks T --include-path DIR]
        [--num-fewshot N] [--limit N] [--compare OTHER_SERIES_DIR]
    python -m checkpoints_tools dynamics EXPORTS [--tensorboard RUN/tensorboard] [--data PREFIX]

Modules: `dist_reader` (torch_dist files read chunk by chunk, no process group), `layout` (key and
tensor layout, pure functions), `safetensors_out` (streaming sharded writer + index), `hf_io`
(configs, HF directories incl. released Baichuan 2 `.bin` shards, tokenizer files), `export`,
`import_hf`, `inspect_run`, `series`, `lm_eval_adapter` (lm-eval's HFLM), `local_tasks`,
`dynamics`; `hf_templates/` holds the modeling and
configuration files of the `baichuan` format (copied into every baichuan export).
"""
