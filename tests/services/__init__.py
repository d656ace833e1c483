"""Real services for the tests: private servers, OpenBao, moto, the RDS-IAM emulator."""
