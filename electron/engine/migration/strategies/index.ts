// Every strategy MigLab offers, by name: add a strategy by adding its file and a line here.
import { autoConverge } from './auto-converge';
import { multifd } from './multifd';
import { pauseBeforeSwitchover } from './pause-before-switchover';
import { precopy } from './precopy';
import type { Strategy, StrategyName } from './strategy';
import { xbzrle } from './xbzrle';

export type { Strategy, StrategyName } from './strategy';

export const STRATEGIES: Readonly<Record<StrategyName, Strategy>> = {
  precopy,
  'auto-converge': autoConverge,
  xbzrle,
  multifd,
  'pause-before-switchover': pauseBeforeSwitchover,
};

export const STRATEGY_NAMES = Object.keys(STRATEGIES) as StrategyName[];
