"""The CDS Hooks 2.0 service: discovery, the readmission-risk service, feedback, authentication and audit."""
