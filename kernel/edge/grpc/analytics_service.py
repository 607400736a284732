"""The ``foundry.analytics.v1.Analytics`` service: analysts' SQL, answered by the store on a read
cursor of its sandboxed instance (``RunUserQuery``; the policy is ``foundry.analytics.sandbox``).
The limits come from ``[analytics]``: a request may ask for less, never more."""

from __future__ import annotations

import itertools

from foundry.analytics import saved_questions as questions
from foundry.analytics.sandbox import QueryRefused, QueryResult
from foundry.kernel.actors.messages import Mailboxes
from foundry.kernel.actors.store.messages import ExportParquet, RunUserQuery
from foundry.kernel.config import AnalyticsConfig
from foundry.kernel.edge.grpc.internals import Encoded, varint
from foundry.kernel.edge.grpc.server import ask
from foundry.proto import analytics_api as api
from grpclib import GRPCError
from grpclib.const import Status

MAX_SQL = 100_000  # characters


class AnalyticsService(api.AnalyticsBase):
    def __init__(self, mailboxes: Mailboxes, config: AnalyticsConfig) -> None:
        self._mail = mailboxes
        self._config = config
        self._questions = {q.name: q for q in questions.list_questions()}

    async def query(self, message: api.QueryRequest) -> api.QueryResponse:
        sql, params = message.sql, dict(message.params)
        if message.question:
            if sql:
                raise _invalid("sql: give either sql or question, not both")
            question = self._questions.get(message.question)
            if question is None:
                names = ", ".join(sorted(self._questions))
                raise _invalid(f"question: no saved question {message.question[:100]!r} "
                               f"(saved questions: {names})")  # fmt: skip
            try:
                params = question.bind(params)
            except QueryRefused as exc:
                raise _invalid(f"params: {exc}") from None
            sql = question.sql
        if not sql.strip():
            raise _invalid("sql: a statement is required")
        if len(sql) > MAX_SQL:
            raise _invalid(f"sql: longer than {MAX_SQL} characters")
        max_rows = min(message.max_rows or self._config.max_rows, self._config.max_rows)
        timeout = self._config.query_timeout
        if message.timeout_ms:
            timeout = min(message.timeout_ms / 1000, timeout)
        limit = self._config.max_reply_bytes
        result: QueryResult = await ask(
            self._mail.store,
            lambda r: RunUserQuery(sql, params, max_rows, timeout, r, encode_rows, limit),
        )
        head = api.QueryResponse(
            columns=[api.Column(name=n, type=t) for n, t in result.columns],
            truncated=result.truncated,
            elapsed_ms=result.elapsed_ms,
        )
        # rows_json (field 2) encoded by the store's worker thread: betterproto2 would take ~10 ms
        # of the daemon's loop per 1,000 rows (measured), delaying every Emit behind it.
        rows = result.rows_wire if result.rows_wire is not None else encode_rows(result.rows)
        return Encoded(bytes(head) + rows)  # type: ignore[return-value]

    async def list_saved_questions(
        self, message: api.ListSavedQuestionsRequest
    ) -> api.ListSavedQuestionsResponse:
        return api.ListSavedQuestionsResponse(
            questions=[
                api.SavedQuestion(
                    name=q.name,
                    title=q.title,
                    description=q.description,
                    sql=q.sql,
                    params=[
                        api.SavedQuestionParam(
                            name=p.name, default=p.default, description=p.description
                        )
                        for p in q.params
                    ],
                )  # fmt: skip
                for q in self._questions.values()
            ]
        )

    async def export_parquet(self, message: api.ExportParquetRequest) -> api.ExportParquetResponse:
        directory, since = message.directory, message.since or None
        if not directory:
            raise _invalid("directory: an absolute path is required")
        if len(directory) > 4096:
            raise _invalid("directory: longer than 4096 characters")
        if "\x00" in directory:
            raise _invalid("directory: a path cannot hold a NUL character")
        rows: dict[str, int] = await ask(
            self._mail.store, lambda r: ExportParquet(directory, since, r)
        )
        return api.ExportParquetResponse(rows=rows)


ROWS_TAG = b"\x12"  # QueryResponse.rows_json: field 2, length-delimited


def encode_rows(rows: tuple[str, ...]) -> bytes:
    """The repeated string ``rows_json`` in protobuf's wire format (loops in C where it can: it
    holds the interpreter lock, against the daemon's loop)."""
    data = list(map(str.encode, rows))
    try:
        prefixes = list(map(_ROW_PREFIXES.__getitem__, map(len, data)))
    except IndexError:  # a row of 16 KiB or more
        prefixes = [ROWS_TAG + varint(len(d)) for d in data]
    return b"".join(itertools.chain.from_iterable(zip(prefixes, data, strict=True)))


_ROW_PREFIXES = [ROWS_TAG + varint(n) for n in range(1 << 14)]  # tag + length, by length


def _invalid(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)
