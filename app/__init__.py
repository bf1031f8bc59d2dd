"""Tanso: carbon-credit marketplace and tender auctions for Japan's J-Credit scheme."""
