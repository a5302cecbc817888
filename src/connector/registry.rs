//! The platform list: the one place that names every connector type.
//!
//! Owns: for each `type:` of a connector section, its config parser, how to build the
//! connector from the validated section, and the label prompts use for it ("Rocket.Chat").
//! Knows nothing about: the platforms' internals (each folder exports a `config::validate`
//! and a constructor). Adding a platform is one folder under `connector/` plus one entry here.

use std::path::Path;
use std::sync::Arc;

use crate::config::schema::SectionSchema;
use crate::config::{ConnectorConfig, ConnectorKind, ConnectorTypes, SectionParser};

use super::{matrix, mattermost, onebot, openai, rocketchat, webchat, Connector};

/// Builds a connector from its validated section (name, platform settings, owners and
/// guests) and the runtime dir.
pub type Builder = fn(&ConnectorConfig, &Path) -> anyhow::Result<Arc<dyn Connector>>;

/// One connector type.
pub struct Platform {
    /// The `type:` value in the file (also the `type_name` of its [`ConnectorKind`]).
    pub type_name: &'static str,
    /// How prompts name the platform to the agent.
    pub label: &'static str,
    pub parse: SectionParser,
    /// Its sections' JSON Schema (`config schema`): `config::schema::connector_section` of
    /// the raw type `parse` reads.
    pub schema: SectionSchema,
    pub build: Builder,
}

/// Every platform the gateway knows.
pub struct Platforms(&'static [Platform]);

pub static PLATFORMS: Platforms = Platforms(&[
    Platform {
        type_name: webchat::TYPE,
        label: "WebChat",
        parse: webchat::config::validate,
        schema: webchat::config::schema,
        build: |config, dir| {
            Ok(Arc::new(webchat::WebchatConnector::new(
                &config.name,
                settings(&config.name, &config.kind)?,
                dir,
            )?))
        },
    },
    Platform {
        type_name: rocketchat::TYPE,
        label: "Rocket.Chat",
        parse: rocketchat::config::validate,
        schema: rocketchat::config::schema,
        build: |config, dir| {
            Ok(Arc::new(rocketchat::RocketChatConnector::new(
                &config.name,
                settings(&config.name, &config.kind)?,
                dir,
            )?))
        },
    },
    Platform {
        type_name: onebot::TYPE,
        label: "QQ",
        parse: onebot::config::validate,
        schema: onebot::config::schema,
        build: |config, dir| {
            Ok(Arc::new(
                onebot::OneBotConnector::new(
                    &config.name,
                    settings(&config.name, &config.kind)?,
                    dir,
                )?
                .with_users(config.users.clone()),
            ))
        },
    },
    Platform {
        type_name: mattermost::TYPE,
        label: "Mattermost",
        parse: mattermost::config::validate,
        schema: mattermost::config::schema,
        build: |config, dir| {
            Ok(Arc::new(mattermost::MattermostConnector::new(
                &config.name,
                settings(&config.name, &config.kind)?,
                dir,
            )?))
        },
    },
    Platform {
        type_name: matrix::TYPE,
        label: "Matrix",
        parse: matrix::config::validate,
        schema: matrix::config::schema,
        build: |config, dir| {
            Ok(Arc::new(matrix::MatrixConnector::new(
                &config.name,
                settings(&config.name, &config.kind)?,
                dir,
            )?))
        },
    },
    Platform {
        type_name: openai::TYPE,
        label: "OpenAI API",
        parse: openai::config::validate,
        schema: openai::config::schema,
        build: |config, dir| {
            Ok(Arc::new(openai::OpenaiConnector::new(
                &config.name,
                settings(&config.name, &config.kind)?,
                dir,
            )?))
        },
    },
]);

impl Platforms {
    pub fn get(&self, type_name: &str) -> Option<&Platform> {
        self.0.iter().find(|p| p.type_name == type_name)
    }
}

impl ConnectorTypes for Platforms {
    fn type_names(&self) -> Vec<&'static str> {
        self.0.iter().map(|p| p.type_name).collect()
    }

    fn parser(&self, type_name: &str) -> Option<SectionParser> {
        self.get(type_name).map(|p| p.parse)
    }

    fn schema(&self, type_name: &str) -> Option<SectionSchema> {
        self.get(type_name).map(|p| p.schema)
    }
}

/// The platform's settings as its own type; a mismatch means a section was validated by one
/// platform and built by another, which only a bug can do.
fn settings<'a, T: 'static>(name: &str, kind: &'a ConnectorKind) -> anyhow::Result<&'a T> {
    kind.settings::<T>().ok_or_else(|| {
        anyhow::anyhow!(
            "connector '{name}': settings of type '{}' do not fit its platform",
            kind.type_name()
        )
    })
}

/// Builds the connector a configuration section describes. `runtime_dir` is where it may keep
/// files of its own (generated tokens, downloads).
pub fn build(config: &ConnectorConfig, runtime_dir: &Path) -> anyhow::Result<Arc<dyn Connector>> {
    match &config.kind {
        ConnectorKind::Embedded => anyhow::bail!(
            "connector '{}' is embedded: the program running the gateway must supply it",
            config.name
        ),
        kind => match PLATFORMS.get(kind.type_name()) {
            Some(p) => (p.build)(config, runtime_dir),
            None => anyhow::bail!(
                "connector '{}' has type '{}', which no platform provides",
                config.name,
                kind.type_name()
            ),
        },
    }
}

/// How prompts name a connector's platform ("Chat" for embedded connectors).
pub fn label(config: &ConnectorConfig) -> &'static str {
    PLATFORMS
        .get(config.kind.type_name())
        .map_or("Chat", |p| p.label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_platform_is_listed_once_with_its_label() {
        let listed: Vec<(&str, &str)> =
            PLATFORMS.0.iter().map(|p| (p.type_name, p.label)).collect();
        assert_eq!(
            listed,
            [
                ("webchat", "WebChat"),
                ("rocketchat", "Rocket.Chat"),
                ("onebot", "QQ"),
                ("mattermost", "Mattermost"),
                ("matrix", "Matrix"),
                ("openai", "OpenAI API")
            ]
        );
        assert!(PLATFORMS.parser("irc").is_none());
    }

    #[test]
    fn an_embedded_connector_is_not_built_from_configuration() {
        let config = ConnectorConfig {
            name: "bench".into(),
            users: Default::default(),
            require_mention: false,
            kind: ConnectorKind::Embedded,
        };
        let err = build(&config, Path::new("/tmp")).err().unwrap().to_string();
        assert!(err.contains("embedded"), "{err}");
        assert_eq!(label(&config), "Chat");
    }
}
