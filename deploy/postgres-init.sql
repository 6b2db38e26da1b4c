-- One server, one database per application: the state store (POSTGRES_DB), Label Studio, Argilla.
CREATE DATABASE label_studio;
CREATE DATABASE argilla;
