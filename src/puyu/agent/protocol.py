"""The agent's view of the InternLM2 action protocol: the parser itself is `puyu.model.tool_calls`
(shared with the evaluation scorers and the verifiable RL rewards); this module re-exports it so the
agent, the server and user code keep one import path."""

from puyu.model.tool_calls import (
    ACTION_END,
    ACTION_START,
    ALIASES,
    IM_END,
    IM_START,
    INTERPRETER,
    MARKERS,
    PLUGIN,
    PLUGIN_EXAMPLE,
    Action,
    ActionError,
    InterpreterCall,
    ParsedTurn,
    PluginCall,
    StreamParser,
    canonical,
    parse_action,
    parse_code,
    parse_plugin,
    parse_turn,
)

__all__ = ["ACTION_END", "ACTION_START", "ALIASES", "IM_END", "IM_START", "INTERPRETER", "MARKERS", "PLUGIN",
           "PLUGIN_EXAMPLE", "Action", "ActionError", "InterpreterCall", "ParsedTurn", "PluginCall", "StreamParser",
           "canonical", "parse_action", "parse_code", "parse_plugin", "parse_turn"]
