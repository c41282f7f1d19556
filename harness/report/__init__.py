"""Reports: sweep results → pandas tables, paper-style Markdown, HTML and seaborn figures."""
