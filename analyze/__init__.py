"""Analysis: collect result.json files into one table and render the paper's tables and figures."""
