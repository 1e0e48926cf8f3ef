//! FlatImage commands that later versions of this launcher implement. They are in the
//! table so that `fim-help` names them and running one says it is not there yet, rather
//! than running the boot command with `fim-...` as its argument.

use super::Command;

pub const REMOTE: Command = Command {
    name: "fim-remote",
    synopsis: "fim-remote set URL | show | clear",
    summary: "Store the address that fim-recipe fetches package recipes from.",
    help: "FlatImage stores it in the reserved block.",
    run: None,
};

pub const RECIPE: Command = Command {
    name: "fim-recipe",
    synopsis: "fim-recipe fetch|info|install RECIPE...",
    summary: "Install packages into the image from recipes at the remote address.",
    help: "FlatImage resolves the recipes' dependencies and runs the image's package manager.",
    run: None,
};
