"""Analysis: tables, statistics, comparisons between arms and with references, plots, the report."""
