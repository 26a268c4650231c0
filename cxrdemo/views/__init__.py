"""Views: what pages and the CLI show (sentences, labels, forms, tables, plotly figures). Imports every layer below."""
