"""The refresh jobs, by name. Each one's logic is a plain module the Celery tasks and the batch
`aisle refresh` command both call."""

from workers.jobs.embeddings import ItemEmbeddings
from workers.jobs.enrichment import ItemEnrichment
from workers.jobs.graph import KnowledgeGraph
from workers.jobs.profiles import UserProfiles
from workers.jobs.sentiment import ReviewSentiment

BATCH_JOBS = {job.name: job for job in (ItemEmbeddings(), ItemEnrichment(), ReviewSentiment(), UserProfiles())}
GRAPH = KnowledgeGraph()
JOB_NAMES = (*BATCH_JOBS, GRAPH.name)
