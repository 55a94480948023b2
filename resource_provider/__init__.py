"""The resource-provider daemon, its executors and the mediator role."""
