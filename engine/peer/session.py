"""What every part of a peer's actor reads about its session."""

from aiortc import RTCPeerConnection
from loguru import logger

from engine.common.protocol import Message
from engine.registry import WorkerHandle


class PeerSession:
    """The facts about one session that the parts of its actor share; only the actor changes them.

    Attributes:
        pc_id: The session's id, handed to the client; it outlives peer connection restarts.
        worker: The worker that runs the session's bot.
        log: A logger bound to the pc_id and the worker.
        pc: The current peer connection: None before the first offer, and
            between a closed one and its restart.
        bot_ready: Whether the bot said it is ready for the peer (``SessionConnect``).
    """

    def __init__(self, pc_id: str, worker: WorkerHandle):
        """Initialize the session, run by ``worker``.

        Args:
            pc_id: The session's id.
            worker: The worker that runs the session's bot.
        """
        self.pc_id = pc_id
        self.pc: RTCPeerConnection | None = None
        self.hand_to(worker)

    def hand_to(self, worker: WorkerHandle) -> None:
        """Have a fresh bot on ``worker`` run the session; it is not ready yet."""
        self.worker = worker
        self.log = logger.bind(pc_id=self.pc_id, worker_id=worker.worker_id)
        self.bot_ready = False

    def to_worker(self, message: Message) -> None:
        """Send a control message to the session's worker."""
        self.worker.outbox.send(message)
