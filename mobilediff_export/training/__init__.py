"""MobileDiffusion's training recipes at small scale, and the demo model they make.

One module per job, in the order the recipe runs::

    data.py        the synthetic captioned data set (shapes, colours, relations, counts)
    config.py      the recipe: a JSON file per recipe (models/training/demo.json, tiny.json)
    runtime.py     CPU or GPU, one process or DDP under torchrun, mixed precision
    loop.py        the stage loop: progress, atomic checkpoints, exact resume, fingerprints
    diffusion.py   the noise schedule in torch, the distillation grids, batched sampling
    vae.py         (a) the autoencoder; its encoder exists only here
    teacher.py     (b) text encoder + UNet, v-prediction, classifier-free guidance dropout
    distill.py     (c) progressive distillation to 8 steps, guidance folded in
    gan.py         (d) DiffusionGAN (UFOGen-style) fine-tuning to one step
    classifier.py  the evaluation classifier (colour, shape, relation, count, size heads)
    evaluate.py    caption accuracy and Fréchet distance on held-out captions
    outputs.py     weights, native model folders
    card.py        the model card
    recipe.py      ``train all``: every stage, the shipped folders, samples, card
    stages.py      the stages by name
    commands.py    the ``mobilediff train`` command group

From Python::

    from mobilediff_export.training.config import load_recipe
    from mobilediff_export.training.runtime import make_runtime
    from mobilediff_export.training.recipe import run_all

    run_all(load_recipe("demo"), Path("runs/demo"), make_runtime(), Path("models/demo"),
            Path("models/demo-1step"))
"""
