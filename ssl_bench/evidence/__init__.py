"""GPU windows that add up: a budgeted, resumable queue of sweep cells (``make gpu-evidence``).

A window is one command on a lent GPU with a hard time budget and a small way back (a few files). ``queue`` reads
a queue file (experiments/queues/<name>.yaml: sweep cells in priority order); ``window`` runs a short gpu-check and
then the queue's next unfinished cells, several at once, stops them at a step boundary when the budget ends and
writes a bundle; ``bundle`` writes and reads that bundle (records of the finished cells, the resumable state of the
unfinished ones, within the way back's limits), from which the next window goes on and which ``land`` copies into
results/records; ``carry`` prepares what travels to a bare GPU machine (wheels and compact data).
"""
