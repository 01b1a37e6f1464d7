"""Bundles: one folder a competitor uploads as a Kaggle dataset, so that an offline submission notebook (no
internet, its own preinstalled torch) can install the pinned runtime and run `arena-dist predict`.

    <bundle>/
      exports/<name>/     every export the predict config uses, copied (adapters, heads, tokenizer, metadata)
      bases/<name>/       LoRA bases, only with `copy_bases: true`; by default a LoRA member's `base_path` is set
                          to where the target serves its base (a Kaggle model input, `base_paths` in the config)
      wheelhouse/         one wheel per runtime package (requirements/runtime.txt, exact versions) for the target's
                          Python and platform, and a wheel of arena_dist built from this checkout; never torch
      predict.yaml        the user's predict config, model paths rewritten to the bundle's copies (relative)
      run.py              install the wheelhouse (`pip install --no-index --no-deps`), then run predict
      notebook_cell.py    the few lines to paste into the notebook
      manifest.json       what is inside: wheels and model files with sizes and sha256, the target the wheelhouse
                          was resolved for, the keys run.py anchors at the bundle's location

Built by `arena-dist bundle` (arena_dist/stages/bundle.py): `exports` places the models and rewrites the config,
`wheelhouse` pins, downloads and checks the wheels (and says how to choose the target), `build` assembles, and
`entry` is run.py itself.
"""
