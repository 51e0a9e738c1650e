"""protojobs.cli: the command line, the only code that prints or exits (`main.main`)."""
