"""The federated learning process: FedAvg composed from attacker client work and a defense."""
