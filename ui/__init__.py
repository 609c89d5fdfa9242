"""The Gradio studio (``headhunter ui``). Not built yet: see the project's issue tracker."""
