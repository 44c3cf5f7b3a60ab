"""Chapter 4's distributed message queue: a broker that speaks the Kafka wire protocol."""
