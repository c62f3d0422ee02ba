"""The Ray workflows, one module or package each: featurize, embed, train, serve, evaluate.

Each imports the core (molecules, modalities, files, encoders, store, model, artifact, inference,
runtime) and none imports another workflow."""
