"""Event-driven reactors for the associations our Storage SCP accepts (pynetdicom 3.0.4 only).

pynetdicom runs two polling loops per association: the DUL thread sleeps 1 ms whenever it
found nothing to do, and the association thread sleeps 1 ms before every look at its message
queue. A C-STORE request and its response cross both loops, so each instance waits a few
milliseconds for nothing, and the DUL reads the socket 4 KB per call. Here, per accepted
association (the sending side is untouched: pynetdicom's send path races with its reactor,
compare pynetdicom issue 875), the DUL thread waits in ``select`` on the socket and on a wake-up
socket that every queued outgoing PDU writes to, the association thread blocks on its message
queue, and PDUs are read in one ``recv_into`` per chunk of up to 1 MiB. The loops are copies of
pynetdicom 3.0.4's (``DULServiceProvider.run_reactor``, ``Association._run_reactor``) with only
the waits changed, so :func:`install` refuses any other version (the association then runs
pynetdicom's own loops). A proposal for upstream: the same waits behind a flag.

With an :class:`~gateway.dicom.incoming.Incoming`, the association's DIMSE provider also
gathers each C-STORE data set in a :class:`~gateway.dicom.incoming.SpillingBuffer` (a large
one goes to a file on the spool's file system as it arrives, not into memory), and the
association's end deletes the files nobody took.
"""

from __future__ import annotations

import functools
import logging
import queue
import select
import socket
import ssl
import time
from io import BytesIO
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.utils import make_target

from gateway.dicom.incoming import Incoming, part10_header

log = logging.getLogger(__name__)

PINNED_VERSION = "3.0.4"
# Idle waits are bounded so that timers (ARTIM, the idle timeout) and kills are still seen.
DUL_WAIT_S = 0.05
ASSOCIATION_WAIT_S = 0.005
READ_CHUNK = 1 << 20


def supported() -> bool:
    return str(pynetdicom.__version__) == PINNED_VERSION


def install(assoc: Any, incoming: Incoming | None = None) -> bool:
    """Give an accepted association (not yet started) the event-driven loops, and C-STORE data
    sets gathered in ``incoming``'s buffers; False (and pynetdicom's own loops and buffers) on
    another pynetdicom version."""
    if not supported():
        return False
    dul = assoc.dul
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    queue_pdu = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        queue_pdu(primitive)
        _wake(wake_w)

    def kill_dul() -> None:
        dul._kill_thread = True
        _wake(wake_w)

    dul.send_pdu = send_pdu
    dul.kill_dul = kill_dul
    dul._target = make_target(functools.partial(_dul_reactor, dul, wake_r, wake_w))
    dul.socket.recv = functools.partial(_recv, dul.socket)
    assoc._run_reactor = functools.partial(_association_reactor, assoc)
    if incoming is not None:
        dimse = assoc.dimse
        dimse.receive_primitive = functools.partial(
            _receive_primitive, assoc, incoming, dimse.receive_primitive
        )
        assoc._run_reactor = functools.partial(_run_then_close, assoc, incoming)
    return True


def _receive_primitive(assoc: Any, incoming: Incoming, receive: Any, primitive: Any) -> None:
    """pynetdicom's ``DIMSEServiceProvider.receive_primitive``, then: a C-STORE request whose
    command is complete and whose data set is still arriving gets a :class:`SpillingBuffer`
    (with what arrived so far) in place of its ``BytesIO``."""
    receive(primitive)
    msg = assoc.dimse.message
    if not isinstance(msg, C_STORE_RQ) or type(msg.data_set) is not BytesIO:
        return  # no message under way, another kind, or already swapped
    try:
        cs = msg.command_set
        sop_class, sop_instance = str(cs.AffectedSOPClassUID), str(cs.AffectedSOPInstanceUID)
        transfer_syntax = str(assoc._accepted_cx[msg.context_id].transfer_syntax[0])
    except (AttributeError, KeyError, IndexError, TypeError):
        return  # pynetdicom refuses the request once it is complete
    header = functools.partial(part10_header, sop_class, sop_instance, transfer_syntax)
    buf = incoming.buffer(header)
    if buf is None:
        return
    buf.write(msg.data_set.getbuffer())
    msg.data_set = buf


def _run_then_close(assoc: Any, incoming: Incoming) -> None:
    try:
        _association_reactor(assoc)
    finally:  # no request of this association is served any more: its files are leftovers
        incoming.close()


def _wake(wake_w: socket.socket) -> None:
    try:
        wake_w.send(b"\0")
    except OSError:  # full (a wake-up is pending anyway) or closed (the loop has ended)
        pass


def _recv(assoc_socket: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` reading into one buffer, up to ``READ_CHUNK`` per call.

    The buffer grows (doubling) with what arrives, never to the declared length at once: a PDU
    header is the peer's word, and six bytes declaring 4 GiB, sent before any check of who the
    peer is, must not make us allocate 4 GiB."""
    sock = assoc_socket.socket
    data = bytearray(min(nr_bytes, READ_CHUNK))
    got = 0
    while got < nr_bytes:
        if got == len(data):
            data.extend(bytes(min(nr_bytes, 2 * len(data)) - len(data)))
        with memoryview(data) as view:
            n = sock.recv_into(view[got:], min(len(data) - got, READ_CHUNK))
        if not n:  # connection closed: what was read so far, as pynetdicom returns it
            return data[:got]
        got += n
    return data


def _wait(dul: Any, wake_r: socket.socket) -> None:
    sock = getattr(dul.socket, "socket", None)
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return  # TLS may hold decrypted bytes select cannot see
    try:
        ready = select.select([wake_r] if sock is None else [sock, wake_r], [], [], DUL_WAIT_S)[0]
    except (OSError, ValueError):  # closed: the transport check reports it
        time.sleep(0.001)
        return
    if wake_r in ready:
        try:
            while wake_r.recv(4096):
                pass
        except OSError:  # drained
            pass


def _dul_reactor(dul: Any, wake_r: socket.socket, wake_w: socket.socket) -> None:
    """pynetdicom 3.0.4's ``DULServiceProvider.run_reactor``, waiting in ``select``."""
    dul._idle_timer.start()
    idle = False
    try:
        while True:
            if not dul.assoc._dul_ready.is_set():
                dul.assoc._dul_ready.set()
            if idle:
                _wait(dul, wake_r)
            if dul._kill_thread:
                break
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")
            try:
                if dul._process_recv_primitive():
                    pass
                elif dul._is_transport_event():
                    dul._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: abort, bypassing the state machine
                log.error("DUL reactor failed, aborting the association: %s", exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                dul.socket.send(abort_pdu.encode())
                dul.assoc.is_aborted = True
                dul.assoc.is_established = False
                dul.assoc._kill = True
                dul._kill_thread = True
                return
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            dul.state_machine.do_action(event)
            idle = False
    finally:
        wake_r.close()
        wake_w.close()


def _association_reactor(assoc: Any) -> None:
    """pynetdicom 3.0.4's acceptor ``Association._run_reactor``, blocking on the message queue
    instead of sleeping 1 ms before each look."""
    assoc._is_paused = False
    while not assoc._kill:
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        try:
            context_id, msg = assoc.dimse.msg_queue.get(timeout=ASSOCIATION_WAIT_S)
        except queue.Empty:
            context_id, msg = None, None
        if msg:
            assoc._serve_request(msg, context_id)
        if assoc.is_established and assoc.acse.is_release_requested():
            # Unlike pynetdicom: released (and EVT_RELEASED) before the response goes out. The
            # peer closes the connection as soon as it has the response, and this DUL answers
            # at once, so its EVT_CONN_CLOSE often came first: a released association looked
            # cut off, and its study waited assembly.interrupted_wait_s for a resend.
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.acse.send_release(is_response=True)
            assoc.kill()
            return
        if assoc.acse.is_aborted():
            assoc.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return
        if not assoc.dul.is_alive():
            assoc.kill()
            return
        if assoc.dul.idle_timer_expired():
            log.error("association idle beyond the network timeout: aborted")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return
