"""limace.md"""
