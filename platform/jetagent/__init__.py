"""jetagent: AI agents as event-sourced microservices on NATS JetStream."""
