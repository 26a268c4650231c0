"""Views: what pages and the CLI show (sentences, labels, tables, plotly figures)."""
