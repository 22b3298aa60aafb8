"""What the runs show: collecting run directories, statistics over seeds, the report's claims,
figures, tables and the HTML report. Reads run directories (hrsnet.rundir); never imports the
training engine."""
