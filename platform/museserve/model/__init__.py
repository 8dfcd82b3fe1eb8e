"""The Muse decoder: architecture config (`config`, torch-free), layers, weights loading.

Import the module you need (`museserve.model.config`, `museserve.model.loader`): this package
itself imports nothing, so reading an architecture does not load torch."""
