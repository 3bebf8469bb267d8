"""Pure functions from a results DataFrame to tables and figures. Never imports torch: reports
read stored runs and format them, so a table can be rebuilt from the tracking store alone."""
