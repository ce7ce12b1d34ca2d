"""limace.analysis"""
