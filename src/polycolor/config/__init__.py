"""params.yaml parsed into typed dataclasses, one module per concept, so a stage imports only the sections it reads.

`base` holds the parsing machinery; `data`, `training`, `evaluation`, `paint` and `serving` one concept's sections
each; `params` the whole file (`Config`, `load_params`), which the check, evaluate and package stages read.
Validation errors are one line that names the key and the value (`train.lr must be > 0, got -1.0`), raised as
ConfigError.
"""
