"""Research scripts whose results the docs quote; not part of the product."""
