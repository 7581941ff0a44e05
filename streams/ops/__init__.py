"""What every room needs to run and be run: the config model, logs, metrics, config reload,
topics, the control topic, the schema registry client and the local broker."""
