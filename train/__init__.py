"""slm.train: data preparation, recipes, the training loop (1 CPU → torchrun FSDP2), checkpoints, evaluation.

Entry points: `slm.train.data.prepare(DataArgs, out)`, `slm.train.loop.train(TrainArgs)`,
`slm.train.evaluate.evaluate(EvalArgs)`; recipes via `slm.train.args.load_recipe(path, overrides)`.
"""
