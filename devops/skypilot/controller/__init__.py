"""What runs on SkyPilot's jobs controller: ``skyguard notify-event``, the task's
``event_callback``, which announces the ends no node can report. Imports ``common``
and ``notifications``, never ``client`` or ``node``; SkyPilot only lazily, in
:mod:`devops.skypilot.controller.skypilot_record`.
"""
