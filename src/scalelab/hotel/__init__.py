"""Hotel reservation (ch. 7): a REST service that never double-books, under any load."""
