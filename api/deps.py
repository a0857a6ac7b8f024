"""Shared route dependencies: settings and the task queue built in the app's lifespan."""

from typing import Annotated

from fastapi import Depends, Request

from api.queue import TaskQueue
from api.settings import ApiSettings, get_settings


def get_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


QueueDep = Annotated[TaskQueue, Depends(get_queue)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
